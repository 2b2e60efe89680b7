// tests/unit/alloc_test.cpp: allocation properties (alignment, usable size, no overlap,
// contents) and the page lists of one thread (free, local_free, used, the full list).
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {

size_t random_size(std::mt19937_64& rng) {
  unsigned r = static_cast<unsigned>(rng() % 1000);
  if (r < 750) return rng() % (kDirectMax + 1);                        // direct sizes
  if (r < 930) return kDirectMax + rng() % (kSmallMax - kDirectMax);   // small pages
  if (r < 985) return kSmallMax + rng() % (kMediumMax - kSmallMax);    // medium pages
  if (r < 998) return kMediumMax + 1 + rng() % (kLargeMax - kMediumMax);  // large spans
  return kLargeMax + 1 + rng() % (6u << 20);                           // huge segments
}

}  // namespace

TEST_CASE("alloc: alignment and usable size follow the size class") {
  settle();
  int bad = 0;
  auto one = [&](size_t n) {
    void* p = alloc(n);
    REQUIRE(p != nullptr);
    size_t u = usable_size(p);
    bool ok = reinterpret_cast<uintptr_t>(p) % kMinAlign == 0 && u >= n;
    if (n <= kMediumMax) ok = ok && u == expected_usable(n);
    else if (n <= kLargeMax) ok = ok && u % kSliceSize == 0 && u - n < kSliceSize;
    else ok = ok && u - n < kSegmentSize + kSliceSize;
    if (ok && n > 0) {
      static_cast<uint8_t*>(p)[0] = 1;
      static_cast<uint8_t*>(p)[n - 1] = 2;
    }
    if (!ok && ++bad <= 8) FAIL_CHECK("n=" << n << " p=" << p << " usable=" << u);
    CHECK(nebula_usable_size(p) == u);
    dealloc(p);
  };
  for (size_t n = 0; n <= 16384; ++n) one(n);
  for (size_t n = 16384; n <= kMediumMax; n += 509) one(n);
  for (size_t n : {kMediumMax - 1, kMediumMax, kMediumMax + 1, size_t{200000}, size_t{1} << 20, kLargeMax - 1,
                   kLargeMax, kLargeMax + 1, size_t{3} << 20})
    one(n);
  CHECK(bad == 0);
  // The prefixed API gives the same guarantees.
  for (size_t n : {size_t{0}, size_t{1}, size_t{17}, size_t{1000}, size_t{5000}, size_t{70000}}) {
    void* p = nebula_malloc(n);
    REQUIRE(p != nullptr);
    CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0);
    CHECK(nebula_usable_size(p) >= n);
    nebula_free(p);
  }
  CHECK(check_heap_invariants(t_heap) == 0);
}

TEST_CASE("alloc: live blocks never overlap and keep their contents") {
  settle();
  size_t base_segments = segments_now();
  std::mt19937_64 rng(42);
  struct Live {
    uint8_t* p;
    size_t n;
    size_t usable;
    uint64_t id;
  };
  std::vector<Live> live;
  const int kCount = 6000;
  for (int i = 0; i < kCount; ++i) {
    size_t n = random_size(rng);
    auto* p = static_cast<uint8_t*>(alloc(n));
    REQUIRE(p != nullptr);
    size_t u = usable_size(p);
    live.push_back({p, n, u, static_cast<uint64_t>(i)});
    fill_edges(p, n, static_cast<uint64_t>(i));
  }
  CHECK(check_heap_invariants(t_heap) == 0);

  // Properties of each block according to where it lives.
  int bad = 0;
  for (const Live& b : live) {
    bool ok = reinterpret_cast<uintptr_t>(b.p) % kMinAlign == 0 && b.usable >= b.n && owns(b.p);
    if (b.n <= kLargeMax) {
      Segment* s = segment_of(b.p);
      Page* pg = page_of(s, b.p);
      ok = ok && is_segment_start_chunk(b.p) && s->kind == SegmentKind::kNormal;
      ok = ok && (reinterpret_cast<uintptr_t>(b.p) & kSegmentMask) >= kSliceSize;  // not in the header
      if (g_runs && b.n > kRunsMin && b.n <= kRunsMax) {
        ok = ok && pg->kind == PageKind::kRuns && (b.p - page_start(s, pg)) % kRunsUnit == 0 && b.usable == expected_usable(b.n);
      } else if (b.n <= kMediumMax) {
        ok = ok && pg->kind == (kClassSize[size_to_class(b.n)] <= kSmallMax ? PageKind::kSmall : PageKind::kMedium);
        ok = ok && (b.p - page_start(s, pg)) % pg->block_size == 0 && pg->block_size == b.usable;
      } else {
        ok = ok && pg->kind == PageKind::kLarge && b.p == page_start(s, pg);
      }
    } else {
      Segment* s = segment_containing(b.p);
      ok = ok && s != nullptr && s->kind == SegmentKind::kHuge && s->huge_start == reinterpret_cast<uintptr_t>(b.p);
    }
    if (!ok && ++bad <= 8) FAIL_CHECK("block " << b.id << " n=" << b.n << " p=" << static_cast<void*>(b.p));
  }
  CHECK(bad == 0);

  // No two blocks overlap, counting each block's whole usable size.
  std::vector<Live> sorted = live;
  std::sort(sorted.begin(), sorted.end(), [](const Live& a, const Live& b) { return a.p < b.p; });
  int overlaps = 0;
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i - 1].p + sorted[i - 1].usable > sorted[i].p && ++overlaps <= 8)
      FAIL_CHECK("blocks overlap: " << static_cast<void*>(sorted[i - 1].p) << " + " << sorted[i - 1].usable
                                    << " > " << static_cast<void*>(sorted[i].p));
  }
  CHECK(overlaps == 0);

  // Free a random half, then allocate again: the contents of the survivors are intact and the
  // new blocks do not overlap them either.
  std::shuffle(live.begin(), live.end(), rng);
  for (size_t i = 0; i < live.size() / 2; ++i) {
    REQUIRE(check_edges(live[i].p, live[i].n, live[i].id));
    dealloc(live[i].p);
  }
  live.erase(live.begin(), live.begin() + static_cast<long>(live.size() / 2));
  for (int i = 0; i < kCount / 2; ++i) {
    size_t n = random_size(rng);
    auto* p = static_cast<uint8_t*>(alloc(n));
    REQUIRE(p != nullptr);
    uint64_t id = static_cast<uint64_t>(kCount + i);
    fill_edges(p, n, id);
    live.push_back({p, n, usable_size(p), id});
  }
  sorted = live;
  std::sort(sorted.begin(), sorted.end(), [](const Live& a, const Live& b) { return a.p < b.p; });
  overlaps = 0;
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1].p + sorted[i - 1].usable > sorted[i].p) ++overlaps;
  CHECK(overlaps == 0);
  int corrupt = 0;
  for (const Live& b : live)
    if (!check_edges(b.p, b.n, b.id)) ++corrupt;
  CHECK(corrupt == 0);
  CHECK(check_heap_invariants(t_heap) == 0);
  for (const Live& b : live) dealloc(b.p);
  settle();
  CHECK(segments_now() == base_segments);
}

TEST_CASE("page lists: local frees return a page's blocks to it for reuse") {
  settle();
  Heap* h = t_heap;
  REQUIRE(h->live);
  const unsigned cls = size_to_class(64);
  REQUIRE(kClassSize[cls] == 64);
  REQUIRE(h->queues[cls].first == nullptr);  // settle() freed every empty page
  const size_t per_page = kSliceSize / 64;

  std::vector<void*> first;
  for (size_t i = 0; i < per_page; ++i) first.push_back(alloc(64));
  Page* page = page_of_ptr(first[0]);
  for (void* p : first) REQUIRE(page_of_ptr(p) == page);
  CHECK(page->kind == PageKind::kSmall);
  CHECK(page->size_class == cls);
  CHECK(page->block_size == 64);
  CHECK(page->reserved == per_page);
  CHECK(page->capacity == per_page);
  CHECK(page->used == per_page);
  CHECK(page->free == nullptr);
  CHECK(h->queues[cls].first == page);
  CHECK(h->direct[64 / 16] == page);
  PageCounts pc = page_counts(page);
  CHECK(pc.consistent());

  // Free them all on the owner thread: the fast path pushes them on `free` (the next malloc
  // pops the block freed last), used returns to 0 and the page stays (the only one of its class).
  for (void* p : first) dealloc(p);
  pc = page_counts(page);
  CHECK(pc.used == 0);
  CHECK(pc.free == per_page);
  CHECK(pc.local_free == 0);
  CHECK(page->free == first.back());
  CHECK(pc.thread_free == 0);
  CHECK(pc.consistent());
  CHECK(page->kind == PageKind::kSmall);
  CHECK(h->queues[cls].first == page);

  // The next allocations reuse exactly those blocks.
  std::vector<void*> second;
  for (size_t i = 0; i < per_page; ++i) second.push_back(alloc(64));
  CHECK(std::set<void*>(first.begin(), first.end()) == std::set<void*>(second.begin(), second.end()));
  CHECK(page->used == per_page);
  CHECK(page->local_free == nullptr);
  CHECK(second.front() == first.back());  // last in, first out

  // One more: the exhausted page moves to the full list, a new page serves the request.
  void* extra = alloc(64);
  Page* page2 = page_of_ptr(extra);
  CHECK(page2 != page);
  CHECK((page->flags & kPageInFull) != 0);
  CHECK(delay_state(page) == kDelayUse);
  CHECK(h->full.first != nullptr);
  bool found = false;
  for (Page* p = h->full.first; p != nullptr; p = p->next) found = found || p == page;
  CHECK(found);
  CHECK(h->queues[cls].first == page2);
  CHECK(h->direct[64 / 16] == page2);

  // A local free into the full page takes it out of the full list.
  dealloc(second[0]);
  CHECK((page->flags & kPageInFull) == 0);
  CHECK(delay_state(page) == kDelayNone);
  CHECK(page->used == per_page - 1);
  CHECK(list_contains(page->local_free, second[0]));
  CHECK(check_heap_invariants(h) == 0);

  // Freeing the new page's only block makes it a spare (it is not the only page of the class):
  // kept whole, out of the queues.
  dealloc(extra);
  CHECK(h->spare == page2);
  CHECK((page2->flags & kPageSpare) != 0);
  CHECK(page2->kind == PageKind::kSmall);
  CHECK(h->queues[cls].first == page);
  for (size_t i = 1; i < second.size(); ++i) dealloc(second[i]);
  CHECK(page->used == 0);
  CHECK(page->kind == PageKind::kSmall);
  CHECK(check_heap_invariants(h) == 0);
  // A forced collection frees the spare and the page kept for reuse.
  settle();
  CHECK(h->spare == nullptr);
  CHECK(h->queues[cls].first == nullptr);
  CHECK(h->direct[64 / 16] == &g_empty_page);
}

// Three full pages of `size`-byte blocks in the thread's (fresh) heap; the first page's blocks are written
// and freed (it is not its class's only page, nor its segment's only span): it becomes a spare.
namespace {
struct SpareSetup {
  std::vector<void*> blocks[3];
  Page* pages[3];
};
SpareSetup make_spare(size_t size = 64) {
  trim(0);  // no free chunk kept resident: the heap's free slices are not resident
  SpareSetup st;
  const size_t per_page = kSliceSize / size;
  for (auto& v : st.blocks)
    for (size_t i = 0; i < per_page; ++i) v.push_back(alloc(size));
  for (int k = 0; k < 3; ++k) {
    st.pages[k] = page_of_ptr(st.blocks[k][0]);
    for (void* b : st.blocks[k]) REQUIRE(page_of_ptr(b) == st.pages[k]);
  }
  for (void* b : st.blocks[0]) {
    memset(b, 0xAB, size);
    dealloc(b);
  }
  return st;
}
}  // namespace

TEST_CASE("spare pages: an emptied page is kept whole and its class's next page takes it back as it was") {
  Worker w;
  w.run([] {
    SpareSetup st = make_spare();
    Heap* h = t_heap;
    Page* p = st.pages[0];
    Segment* s = segment_of(p);
    const unsigned idx = static_cast<unsigned>(p - s->pages);
    CHECK(h->spare == p);
    CHECK(h->spare_count == 1);
    CHECK((page_flags(p) & kPageSpare) != 0);
    CHECK(p->kind == PageKind::kSmall);
    CHECK(((s->free_slices >> idx) & 1) == 0);  // still a span of its segment
    CHECK(check_heap_invariants(h) == 0);
    const uint16_t capacity = p->capacity;
    const uint64_t made = h->stats.pages_made[0];
    // The other pages are full: the next block needs a new page, and the spare is it.
    void* b = alloc(64);
    CHECK(page_of_ptr(b) == p);
    CHECK(b == st.blocks[0].back());  // the block freed last comes first, as on any page
    CHECK(p->capacity == capacity);   // nothing carved
    CHECK(page_flags(p) == 0);
    CHECK(h->spare == nullptr);
    CHECK(h->stats.pages_made[0] == made);  // no span was taken
    CHECK(h->queues[size_to_class(64)].first == p);
    CHECK(check_heap_invariants(h) == 0);
    dealloc(b);
    for (int k = 1; k < 3; ++k)
      for (void* x : st.blocks[k]) dealloc(x);
    CHECK(check_heap_invariants(h) == 0);
  });
}

TEST_CASE("spare pages: another class sets a spare page up anew over memory that is not clean") {
  Worker w;
  w.run([] {
    SpareSetup st = make_spare(48);
    Heap* h = t_heap;
    Page* p = st.pages[0];
    REQUIRE(h->spare == p);
    // The class of 256 has no page in this heap: its first page is the spare, and calloc's
    // blocks are zero although the 48-byte blocks were written with 0xAB (most 256-byte blocks
    // start inside an old block, where 0xAB bytes, not a free key, fill their key word).
    std::vector<void*> zs;
    for (size_t i = 0; i < kSliceSize / 256; ++i) {
      void* z = nebula_calloc(1, 256);
      REQUIRE(z != nullptr);
      CHECK(page_of_ptr(z) == p);
      CHECK(all_zero(z, 256));
      zs.push_back(z);
    }
    CHECK(p->block_size == 256);
    CHECK(p->is_clean == 0);
    CHECK(p->size_class == size_to_class(256));
    CHECK(p->reserved == kSliceSize / 256);
    CHECK(h->spare == nullptr);
    CHECK(check_heap_invariants(h) == 0);
    for (void* z : zs) dealloc(z);
    for (int k = 1; k < 3; ++k)
      for (void* x : st.blocks[k]) dealloc(x);
  });
}

// Spare pages hold resident slices only the heap's next small pages can use: they go back to
// their segments before the heap takes slices that are not resident, and at a maintenance pass
// when no page took one since the pass before.
TEST_CASE("spare pages: they go back before the heap grows, and when no page takes them") {
  Worker w;
  w.run([] {
    SpareSetup st = make_spare();
    Heap* h = t_heap;
    REQUIRE(h->spare == st.pages[0]);
    // A large block that no resident run can hold.
    void* big = alloc(size_t{30} * kSliceSize);
    REQUIRE(big != nullptr);
    CHECK(h->spare == nullptr);
    CHECK(st.pages[0]->kind == PageKind::kNone);  // free slices of its segment again
    CHECK(check_heap_invariants(h) == 0);
    dealloc(big);
    // Spare again (a full page emptied while another of its class takes the allocations); two
    // maintenance passes with no page made in between free it.
    std::vector<void*> more;
    for (size_t i = 0; i < 2 * (kSliceSize / 64); ++i) more.push_back(alloc(64));
    Page* p = page_of_ptr(more[0]);
    REQUIRE(page_of_ptr(more.back()) != p);
    std::vector<void*> rest;  // the blocks of the other pages (once p goes, its blocks lead elsewhere)
    for (void* b : more) {
      if (page_of_ptr(b) == p) dealloc(b);
      else rest.push_back(b);
    }
    REQUIRE(h->spare == p);
    h->spare_taken_mark = h->spare_taken - 1;  // as if a page had taken one since the last pass
    h->next_maintenance_ms = 0;
    heap_maintenance(h, false);
    CHECK(h->spare == p);
    h->next_maintenance_ms = 0;
    heap_maintenance(h, false);
    CHECK(h->spare == nullptr);
    CHECK(check_heap_invariants(h) == 0);
    for (void* b : rest) dealloc(b);
    for (int k = 1; k < 3; ++k)
      for (void* x : st.blocks[k]) dealloc(x);
  });
}

TEST_CASE("page lists: the counts invariant holds through a mixed workload") {
  settle();
  Heap* h = t_heap;
  std::mt19937_64 rng(7);
  std::vector<void*> live;
  for (int round = 0; round < 6; ++round) {
    for (int i = 0; i < 4000; ++i) {
      size_t n = rng() % 3 == 0 ? rng() % kMediumMax : rng() % 512;
      live.push_back(alloc(n));
    }
    std::shuffle(live.begin(), live.end(), rng);
    size_t keep = live.size() / 3;
    for (size_t i = keep; i < live.size(); ++i) dealloc(live[i]);
    live.resize(keep);
    CAPTURE(round);
    CHECK(check_heap_invariants(h) == 0);
  }
  for (void* p : live) dealloc(p);
  CHECK(check_heap_invariants(h) == 0);
  settle();
  CHECK(h->segments == nullptr);
}

TEST_CASE("api: edge cases of the prefixed entry points") {
  settle();
  void* z = nebula_malloc(0);
  CHECK(z != nullptr);
  CHECK(nebula_usable_size(z) >= 1);
  nebula_free(z);
  nebula_free(nullptr);  // no-op
  CHECK(nebula_usable_size(nullptr) == 0);

  {
    const CallResult r = call_errno([&] { return nebula_calloc(SIZE_MAX / 2, 3); });
    CHECK(r.p == nullptr);
    CHECK(r.err == ENOMEM);
  }
  {
    const CallResult r = call_errno([&] { return nebula_malloc(static_cast<size_t>(PTRDIFF_MAX)); });
    CHECK(r.p == nullptr);
    CHECK(r.err == ENOMEM);
  }
  {
    const CallResult r = call_errno([&] { return nebula_realloc(nullptr, SIZE_MAX); });
    CHECK(r.p == nullptr);
    CHECK(r.err == ENOMEM);
  }

  // realloc(NULL, n) allocates, realloc(p, 0) frees and returns NULL.
  void* r = nebula_realloc(nullptr, 100);
  REQUIRE(r != nullptr);
  CHECK(owns(r));
  CHECK(nebula_realloc(r, 0) == nullptr);

  void* out = nullptr;
  CHECK(nebula_posix_memalign(&out, 24, 10) == EINVAL);
  CHECK(nebula_posix_memalign(&out, 8, 10) == 0);
  CHECK(out != nullptr);
  nebula_free(out);
  CHECK(nebula_posix_memalign(&out, 4096, 10) == 0);
  CHECK(reinterpret_cast<uintptr_t>(out) % 4096 == 0);
  nebula_free(out);
  // aligned_alloc rounds an alignment that is not a power of two up to one (glibc 2.36).
  void* a = nebula_aligned_alloc(48, 10);
  REQUIRE(a != nullptr);
  CHECK(reinterpret_cast<uintptr_t>(a) % 64 == 0);
  nebula_free(a);

  CHECK(nebula_mem_is_active() == 0);  // glibc serves this process's malloc
  CHECK(std::string(nebula_mem_version()) == "0.1.0");

  // A block of glibc's malloc handed to nebula_free goes back to glibc.
  size_t ff = g_counters.foreign_frees.load();
  void* g = std::malloc(100);
  REQUIRE(g != nullptr);
  CHECK_FALSE(owns(g));
  CHECK(nebula_usable_size(g) >= 100);
  nebula_free(g);
  CHECK(g_counters.foreign_frees.load() == ff + 1);
  void* gbig = std::malloc(size_t{1} << 20);  // glibc serves this one with its own mmap
  REQUIRE(gbig != nullptr);
  CHECK_FALSE(owns(gbig));
  nebula_free(gbig);
  CHECK(g_counters.foreign_frees.load() == ff + 2);
  ff = g_counters.foreign_frees.load();
  // ... and realloc moves it into our memory, keeping the contents.
  auto* g2 = static_cast<uint8_t*>(std::malloc(200));
  REQUIRE(g2 != nullptr);
  fill(g2, 200, 9);
  auto* m = static_cast<uint8_t*>(nebula_realloc(g2, 5000));
  REQUIRE(m != nullptr);
  CHECK(owns(m));
  CHECK(check_fill(m, 200, 9));
  CHECK(g_counters.foreign_frees.load() == ff + 1);
  // A failed realloc leaves the block alone.
  {
    const CallResult r = call_errno([&] { return nebula_realloc(m, SIZE_MAX / 2); });
    CHECK(r.p == nullptr);
    CHECK(r.err == ENOMEM);
  }
  CHECK(check_fill(m, 200, 9));
  nebula_free(m);
}

// An empty page that is the only one of its class is kept (a loop that allocates and frees one
// block must not make and unmake a page each time), unless it is the last span of its segment
// and another of the heap's segments has room for the class's next page: then it goes, and its
// segment with it, so that an idle thread does not pin a segment another thread could use.
TEST_CASE("page retire: the last page of a segment goes when the heap has room elsewhere") {
  Worker w;
  w.run([] {
    Heap* h = nullptr;
    const size_t big = size_t{30} * kSliceSize - 4096;  // a large block of 30 slices
    void* l1 = alloc(big);
    h = t_heap;
    void* l2 = alloc(big);
    REQUIRE(l1 != nullptr);
    REQUIRE(l2 != nullptr);
    Segment* a = segment_of(l1);
    REQUIRE(segment_of(l2) == a);                       // 60 of 63 slices used
    const size_t medium = 131072;                       // 8-slice pages
    REQUIRE(page_slices_for_class(size_to_class(medium)) == 8);
    void* m = alloc(medium);
    REQUIRE(m != nullptr);
    Segment* b = segment_of(m);
    REQUIRE(b != a);                                    // no room in a: a second segment
    CHECK(h->segment_count == 2);
    // a is full: the empty page is kept, and b with it.
    dealloc(m);
    Page* pm = page_of(b, m);
    CHECK(pm->kind == PageKind::kMedium);
    CHECK(pm->used == 0);
    CHECK(h->segment_count == 2);
    // Reuse: the next block comes from the kept page.
    void* m2 = alloc(medium);
    CHECK(page_of(segment_of(m2), m2) == pm);
    // Now a has room: freeing the block frees the page and b.
    dealloc(l2);
    CHECK(h->segment_count == 2);
    dealloc(m2);
    CHECK(h->segment_count == 1);
    CHECK(segment_containing(m2) == nullptr);
    // The next block of the class goes to a, and its page is kept there when it empties.
    void* m3 = alloc(medium);
    REQUIRE(m3 != nullptr);
    CHECK(segment_of(m3) == a);
    dealloc(m3);
    CHECK(h->segment_count == 1);
    CHECK(page_of(a, m3)->kind == PageKind::kMedium);
    CHECK(page_of(a, m3)->used == 0);
    CHECK(check_heap_invariants(h) == 0);
    dealloc(l1);
  });
}

TEST_CASE("page carving: a fresh page's first carve touches one OS page at most") {
  RunsOff classes;  // (10 KiB is a runs size otherwise)
  settle();
  Heap* h = t_heap;
  REQUIRE(h->live);
  // One block of a class with blocks of an OS page or more (a start-up buffer): one block is
  // carved, not four (each would write its link into another OS page). Classes of smaller
  // blocks carve one OS page's worth; the next carve takes at least four blocks again.
  for (size_t n : {size_t{4096}, size_t{10 * 1024}, size_t{72 * 1024}, size_t{2048}, size_t{64}}) {
    const unsigned cls = size_to_class(n);
    REQUIRE(h->queues[cls].first == nullptr);
    void* p = alloc(n);
    REQUIRE(p != nullptr);
    Page* page = page_of_ptr(p);
    const size_t bsize = kClassSize[cls];
    const size_t first = bsize >= 4096 ? 1 : 4096 / bsize;
    CHECK(page->capacity == first);
    std::vector<void*> more;
    for (size_t i = 0; i < first; ++i) more.push_back(alloc(n));  // the carve after the first
    CHECK(page->capacity >= first + std::min<size_t>(std::max<size_t>(4096 / bsize, 4), page->reserved - first));
    for (void* q : more) dealloc(q);
    dealloc(p);
  }
  settle();
}

// Sizes above kDirectMax up to kDirect2Max reach their class's current page through the second
// direct table (one entry per 512 bytes): with a free block there, malloc takes the fast path (no
// slow-path call counted) and hands out the block freed last.
TEST_CASE("alloc: sizes up to 32 KiB take the fast path (malloc and calloc) when their class's page has a free block") {
  RunsOff classes;  // the classes' pages (requests of this range go to runs pages otherwise)
  Worker w;
  w.run([] {
    Heap* h = nullptr;
    for (size_t n = kDirectMax + 1; n <= kDirect2Max; n += 333) {
      void* p = alloc(n);
      REQUIRE(p != nullptr);
      h = t_heap;
      const unsigned cls = size_to_class(n);
      CHECK(page_of_ptr(p)->size_class == cls);
      CHECK(h->direct2[direct2_slot(n)] == h->queues[cls].first);
      dealloc(p);  // the page keeps it (the only page of its class)
      const uint64_t g0 = h->stats.generic_calls;
      void* q = alloc(n);
      CAPTURE(n);
      CHECK(q == p);
      CHECK(h->stats.generic_calls == g0);
      memset(q, 0xab, n);
      dealloc(q);
      // calloc too, and the block comes back zeroed.
      auto* z = static_cast<uint8_t*>(alloc_zero(n));
      CHECK(z == p);
      CHECK(h->stats.generic_calls == g0);
      size_t nonzero = 0;
      for (size_t i = 0; i < n; ++i) nonzero += z[i] != 0;
      CHECK(nonzero == 0);
      dealloc(z);
    }
    // Just above the table: the slow path, as before.
    void* p = alloc(kDirect2Max + 1);
    dealloc(p);
    const uint64_t g0 = h->stats.generic_calls;
    void* q = alloc(kDirect2Max + 1);
    CHECK(q == p);
    CHECK(h->stats.generic_calls == g0 + 1);
    dealloc(q);
  });
}

// calloc of fewer than 16 bytes zeroes only those, which end before the block's key word: the
// key must go too, or the block's free reads as a suspected double free (free's generic path
// then walks the page's free lists to disprove it: cc1plus made 3,655 such frees, 13 M steps).
TEST_CASE("alloc: calloc of fewer than 16 bytes on a reused block clears its free key") {
  Worker w;
  w.run([] {
    for (size_t n = 1; n < 16; ++n) {
      void* p = alloc(16);
      REQUIRE(p != nullptr);
      memset(p, 0xcd, 16);
      dealloc(p);
      REQUIRE(static_cast<Block*>(p)->key == g_free_key);  // on the free list, marked
      const uint64_t g0 = t_heap->stats.generic_calls;
      auto* z = static_cast<uint8_t*>(alloc_zero(n));
      CAPTURE(n);
      REQUIRE(z == p);  // the fast path, the same block
      CHECK(t_heap->stats.generic_calls == g0);
      CHECK(reinterpret_cast<Block*>(z)->key != g_free_key);
      size_t nonzero = 0;
      for (size_t i = 0; i < n; ++i) nonzero += z[i] != 0;
      CHECK(nonzero == 0);
      dealloc(z);
    }
  });
}

// A medium class whose current page runs out takes its next block from the fullest of the pages
// with room, so that the emptier ones drain and go back (queue_fullest_first).
TEST_CASE("alloc: a medium class takes the next block from its fullest page, and the emptier one drains") {
  RunsOff classes;
  // No segment left behind by an earlier test's thread for the worker's heap to adopt: its pages
  // of this class would take the blocks first.
  settle();
  REQUIRE(abandoned_count() == 0);
  Worker w;
  w.run([] {
    const size_t n = 24 * 1024;
    const unsigned cls = size_to_class(n);
    REQUIRE(kClassSize[cls] > kSmallMax);
    Heap* h = nullptr;
    std::vector<void*> blocks{alloc(n)};
    REQUIRE(blocks[0] != nullptr);
    h = t_heap;
    const uint32_t per_page = page_of_ptr(blocks[0])->reserved;
    REQUIRE(per_page >= 3);
    while (blocks.size() < 3 * per_page) blocks.push_back(alloc(n));  // three pages' worth
    std::vector<Page*> pages;
    for (void* p : blocks)
      if (pages.empty() || pages.back() != page_of_ptr(p)) pages.push_back(page_of_ptr(p));
    REQUIRE(pages.size() == 3);
    // The first page keeps one live block, the second all but one; the third is the current one
    // and has no free block left.
    for (uint32_t i = 1; i < per_page; ++i) dealloc(blocks[i]);
    dealloc(blocks[per_page]);
    CHECK(pages[0]->used == 1);
    CHECK(pages[1]->used == per_page - 1);
    CHECK(h->queues[cls].first == pages[2]);
    void* q = alloc(n);
    CHECK(page_of_ptr(q) == pages[1]);  // not pages[0], which comes first in the queue
    // The first page's last block goes: the page is empty and its span goes back.
    const uint64_t freed0 = h->stats.pages_freed[kind_index(PageKind::kMedium)];
    dealloc(blocks[0]);
    CHECK(h->stats.pages_freed[kind_index(PageKind::kMedium)] == freed0 + 1);
    dealloc(q);
    for (size_t i = per_page + 1; i < blocks.size(); ++i) dealloc(blocks[i]);
  });
}
