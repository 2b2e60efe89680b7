// Class caches: the owner's frees of blocks from 4 to 32 KiB (class_caches_frees) into pages
// that are full wait in the heap's cache of the class (the foreign cache's lists), and malloc
// takes them back, the last freed first. See "Class caches" in docs/design.md.
#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {

constexpr size_t kSize = 5000;  // the 5120-byte class: 12 blocks to a page

struct Pages {
  std::vector<void*> blocks[3];
  Page* page[3];
};

// Three full pages of the class, in the order they were made (the first two in the full list).
Pages fill_three_pages(size_t n) {
  Pages st;
  const unsigned cls = size_to_class(n);
  const size_t per_page = kSliceSize / kClassSize[cls];
  std::vector<void*> all;
  for (size_t i = 0; i < 3 * per_page; ++i) all.push_back(alloc(n));
  int k = -1;
  for (void* b : all) {
    if (k < 0 || page_of_ptr(b) != st.page[k]) {
      ++k;
      REQUIRE(k < 3);
      st.page[k] = page_of_ptr(b);
    }
    st.blocks[k].push_back(b);
  }
  for (auto& v : st.blocks) REQUIRE(v.size() == per_page);
  return st;
}

void free_all(Pages& st) {
  for (auto& v : st.blocks)
    for (void* b : v) dealloc(b);
}

// The owner frees the first `count` blocks (of n bytes) of its full page p: they wait in the
// heap's cache of the class, marked, the page still counting them handed out; the direct table
// points at the cache once it holds count blocks (fcache_direct_min), and malloc takes them
// back on its fast path, the last freed first. blocks[0..count) hold the blocks taken back.
void cache_round_trip(Page* p, std::vector<void*>& blocks, size_t n, uint32_t count) {
  Heap* h = t_heap;
  const unsigned cls = size_to_class(n);
  REQUIRE(page_flags(p) == kPageInFull);
  CHECK(p->fast_magic == 0);  // every free of a full page takes the generic path
  REQUIRE(count == fcache_direct_min(cls));
  REQUIRE(count > 1);
  REQUIRE(count < blocks.size());
  const uint32_t used0 = p->used;
  const uint64_t live0 = stats().live_bytes;
  for (uint32_t i = 0; i < count; ++i) {
    dealloc(blocks[i]);
    CHECK(fcache_held(h, cls) == i + 1);
    CHECK(in_foreign_cache(p, static_cast<Block*>(blocks[i])));  // the cache's mark
  }
  CHECK(p->used == used0);  // still handed out, as far as the page knows
  CHECK(page_flags(p) == kPageInFull);
  CHECK(p->free == nullptr);
  CHECK(p->local_free == nullptr);
  CHECK(stats().live_bytes + count * kClassSize[cls] == live0);  // a cached block is not live
  const size_t slot = direct2_slot(n);
  CHECK(h->direct2[slot] == &h->fc->page[cls]);
  CHECK(check_heap_invariants(h) == 0);
  const uint64_t g0 = h->stats.generic_calls;
  std::vector<void*> back;
  for (uint32_t i = 0; i < count; ++i) back.push_back(alloc(n));
  for (uint32_t i = 0; i < count; ++i) CHECK(back[i] == blocks[count - 1 - i]);
  CHECK(h->stats.generic_calls == g0);  // all on the fast path
  CHECK(fcache_held(h, cls) == 0);
  CHECK(p->used == used0);
  for (uint32_t i = 0; i < count; ++i) blocks[i] = back[i];  // (what is live now)
}

}  // namespace

// Smaller classes keep the page's own lists: a 3000-byte block freed into a full page goes to
// its page. The cache holds 64 KiB of blocks: 16 of 4 KiB, 8 of 8 KiB.
TEST_CASE("class caches: blocks under 4 KiB go to their full page, and the caches hold 64 KiB") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const size_t n = 3000;
    const unsigned cls = size_to_class(n);
    CHECK_FALSE(class_caches_frees(cls));
    Pages st = fill_three_pages(n);
    Heap* h = t_heap;
    Page* p = st.page[0];
    REQUIRE(page_flags(p) == kPageInFull);
    const uint32_t used = p->used;
    dealloc(st.blocks[0][0]);
    CHECK(fcache_held(h, cls) == 0);
    CHECK(p->used == used - 1);  // home at once
    CHECK((page_flags(p) & kPageInFull) == 0);
    st.blocks[0].erase(st.blocks[0].begin());  // freed already
    free_all(st);
    CHECK(check_heap_invariants(h) == 0);
  });
  CHECK(class_caches_frees(size_to_class(4096)));
  CHECK(class_caches_frees(size_to_class(8192)));
  CHECK(class_caches_frees(size_to_class(32768)));
  CHECK_FALSE(class_caches_frees(size_to_class(32769)));
  CHECK(fcache_limit(size_to_class(4096)) == 16);
  CHECK(fcache_limit(size_to_class(8192)) == 8);
  CHECK(fcache_limit(size_to_class(16384)) == 4);
  CHECK(fcache_limit(size_to_class(32768)) == 4);  // at least 4 blocks, beyond 64 KiB
}

// A medium class (pages of a few blocks) caches the owner's frees into its full pages too, and
// malloc pops them on the fast path once the cache holds half its limit (2 of 4 blocks of
// 20 KiB): random replacement of such blocks took the slow path on nearly every allocation.
TEST_CASE("class caches: a medium class of 20 KiB caches the owner's frees into its full pages") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const size_t n = 20000;
    const unsigned cls = size_to_class(n);
    REQUIRE(class_caches_frees(cls));
    REQUIRE(kClassSize[cls] > kSmallMax);
    std::vector<void*> blocks;
    blocks.push_back(alloc(n));
    Page* p = page_of_ptr(blocks[0]);
    REQUIRE(p->kind == PageKind::kMedium);
    while (blocks.size() < p->reserved) blocks.push_back(alloc(n));
    void* other = alloc(n);  // the page is full: this one comes from the next page
    REQUIRE(page_of_ptr(other) != p);
    Heap* h = t_heap;
    REQUIRE(fcache_direct_min(cls) == 2);
    cache_round_trip(p, blocks, n, 2);
    for (void* b : blocks) dealloc(b);
    dealloc(other);
    trim(0);
    CHECK(fcache_held(h, cls) == 0);
    CHECK(check_heap_invariants(h) == 0);
  });
}

TEST_CASE("class caches: the owner's frees into full pages wait in the cache, and malloc takes them back last freed first") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const unsigned cls = size_to_class(kSize);
    Pages st = fill_three_pages(kSize);
    Heap* h = t_heap;  // (the thread's heap exists from its first malloc)
    Page* p = st.page[0];
    cache_round_trip(p, st.blocks[0], kSize, fcache_direct_min(cls));  // half the limit
    const size_t slot = direct2_slot(kSize);
    // The cache ran dry: the next block comes from the pages again, and the table follows.
    void* q = alloc(kSize);
    CHECK(page_of_ptr(q) != p);
    CHECK((h->fc_active & (uint64_t{1} << cls)) == 0);
    CHECK(h->direct2[slot] != &h->fc->page[cls]);
    dealloc(q);
    free_all(st);
    trim(0);
    CHECK(fcache_held(h, cls) == 0);
    CHECK(check_heap_invariants(h) == 0);
  });
}

TEST_CASE("class caches: a free into a page that is not full takes the fast path to that page") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const unsigned cls = size_to_class(kSize);
    void* a = alloc(kSize);
    void* b = alloc(kSize);
    Heap* h = t_heap;
    Page* p = page_of_ptr(a);
    REQUIRE(page_of_ptr(b) == p);
    REQUIRE(h->queues[cls].first == p);
    REQUIRE(page_flags(p) == 0);
    const uint32_t used = p->used;
    const uint64_t g0 = h->stats.generic_calls;
    dealloc(b);
    CHECK(fcache_held(h, cls) == 0);
    CHECK(p->free == b);  // LIFO: the next malloc of the class takes it back
    CHECK(p->used == used - 1);
    CHECK(alloc(kSize) == b);
    CHECK(h->stats.generic_calls == g0);
    dealloc(b);
    dealloc(a);
    CHECK(check_heap_invariants(h) == 0);
  });
}

// Not malloc's current page either: a page that a trim took out of the full list (its cached
// block went home) has a free block, and the next free into it goes to it, not to the cache.
TEST_CASE("class caches: a free into a page with free blocks that is not malloc's goes to that page") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const unsigned cls = size_to_class(kSize);
    Pages st = fill_three_pages(kSize);
    Heap* h = t_heap;
    Page* p = st.page[0];
    REQUIRE(page_flags(p) == kPageInFull);
    dealloc(st.blocks[0][0]);
    REQUIRE(fcache_held(h, cls) == 1);
    trim(0);  // the cache goes home: the page has a free block and leaves the full list
    REQUIRE(page_flags(p) == 0);
    REQUIRE(h->queues[cls].first != p);
    const uint32_t used = p->used;
    dealloc(st.blocks[0][1]);
    CHECK(fcache_held(h, cls) == 0);
    CHECK(p->used == used - 1);
    CHECK(p->free == st.blocks[0][1]);  // the fast path's push
    for (size_t i = 2; i < st.blocks[0].size(); ++i) dealloc(st.blocks[0][i]);
    for (int k = 1; k < 3; ++k)
      for (void* b : st.blocks[k]) dealloc(b);
    CHECK(check_heap_invariants(h) == 0);
  });
}

TEST_CASE("class caches: a run of frees longer than the cache sends it home, until the class's next slow-path allocation") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const unsigned cls = size_to_class(kSize);
    const uint64_t bit = uint64_t{1} << cls;
    const uint32_t limit = fcache_limit(cls);
    Pages st = fill_three_pages(kSize);
    Heap* h = t_heap;
    REQUIRE(page_flags(st.page[0]) == kPageInFull);
    REQUIRE(page_flags(st.page[1]) == kPageInFull);
    REQUIRE(st.blocks[0].size() + st.blocks[1].size() > limit + 1);
    std::vector<void*> freed;
    for (int k = 0; k < 2; ++k)
      for (void* b : st.blocks[k]) freed.push_back(b);
    const uint32_t used0 = st.page[0]->used + st.page[1]->used;
    for (uint32_t i = 0; i < limit; ++i) dealloc(freed[i]);
    CHECK(fcache_held(h, cls) == limit);
    CHECK(st.page[0]->used + st.page[1]->used == used0);
    // One more: not a replacement pattern. The cache goes home (its blocks would otherwise keep
    // their pages alive once the program has freed everything), and so does this block.
    dealloc(freed[limit]);
    CHECK(fcache_held(h, cls) == 0);
    CHECK((h->fc_active & bit) == 0);
    CHECK((h->cache_bulk & bit) != 0);
    CHECK(st.page[0]->used + st.page[1]->used == used0 - (limit + 1));
    dealloc(freed[limit + 1]);  // the run goes on: to its page (not full any more)
    CHECK(fcache_held(h, cls) == 0);
    CHECK(st.page[0]->used + st.page[1]->used == used0 - (limit + 2));
    CHECK(check_heap_invariants(h) == 0);
    // The class's next slow-path allocation ends the run: the cache takes frees again.
    std::vector<void*> again;
    const uint64_t g0 = h->stats.generic_calls;
    while (h->stats.generic_calls == g0) again.push_back(alloc(kSize));
    CHECK((h->cache_bulk & bit) == 0);
    for (size_t i = limit + 2; i < freed.size(); ++i) dealloc(freed[i]);
    for (void* b : again) dealloc(b);
    for (void* b : st.blocks[2]) dealloc(b);
    trim(0);  // a forced collect: whatever the cache holds goes home
    CHECK(fcache_held(h, cls) == 0);
    CHECK(check_heap_invariants(h) == 0);
  });
}

// A page's descriptor keeps what it held when its span goes back, and a large block's flags are
// those of a full page: a large block that takes the slices of a freed page of a caching class
// must be freed as a large block, never into a class cache (it would never be freed). (A first
// version kept a per-page flag that such a large span inherited; the fuzzer found it.)
TEST_CASE("class caches: a large block on the slices of a page of a caching class is freed as a large block") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    void* keeper = alloc(64);  // the segment stays when the pages go
    Pages st = fill_three_pages(kSize);
    Heap* h = t_heap;
    std::vector<Page*> old = {st.page[0], st.page[1], st.page[2]};
    for (Page* p : old) REQUIRE(segment_of(p) == segment_of(keeper));
    free_all(st);
    trim(0);  // the pages' spans go back to the segment; their descriptors keep their fields
    bool reused = false;
    std::vector<void*> big;
    for (int i = 0; i < 8 && !reused; ++i) {
      void* b = alloc(kMediumMax + 1);  // a large block of 3 slices
      Page* bp = page_of_ptr(b);
      REQUIRE(bp->kind == PageKind::kLarge);
      reused = std::find(old.begin(), old.end(), bp) != old.end();
      big.push_back(b);
    }
    REQUIRE(reused);  // the test is about a descriptor that held a caching page
    const uint64_t live0 = stats().live_bytes;
    for (void* b : big) dealloc(b);
    CHECK(stats().live_bytes < live0);
    CHECK((h->fc == nullptr || h->fc_active == 0));  // nothing went to a cache
    CHECK(check_heap_invariants(h) == 0);
    dealloc(keeper);
  });
}

// The maintenance pass sends home a class cache that handed out no block since the pass before:
// its blocks pin their pages, and a program whose blocks outgrew the class would keep them.
TEST_CASE("class caches: a cache that handed out nothing since the last maintenance pass goes home") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const unsigned cls = size_to_class(kSize);
    Pages st = fill_three_pages(kSize);
    Heap* h = t_heap;
    REQUIRE(page_flags(st.page[0]) == kPageInFull);
    const uint32_t used0 = st.page[0]->used;
    for (int i = 0; i < 5; ++i) dealloc(st.blocks[0][i]);
    REQUIRE(fcache_held(h, cls) == 5);
    void* again = alloc(kSize);  // handed out from the cache since the last pass
    CHECK(again == st.blocks[0][4]);
    fcache_flush_idle(h);
    CHECK(fcache_held(h, cls) == 4);  // in use: kept
    fcache_flush_idle(h);             // nothing handed out since
    CHECK(fcache_held(h, cls) == 0);
    CHECK((h->fc_active & (uint64_t{1} << cls)) == 0);
    CHECK(st.page[0]->used == used0 - 4);
    CHECK(check_heap_invariants(h) == 0);
    dealloc(again);
    for (size_t i = 5; i < st.blocks[0].size(); ++i) dealloc(st.blocks[0][i]);
    for (int k = 1; k < 3; ++k)
      for (void* b : st.blocks[k]) dealloc(b);
    CHECK(check_heap_invariants(h) == 0);
  });
}

// A class the heap holds many pages of caches up to an eighth of their blocks (up to 64), not
// only its base limit: random replacement among 1,024 buffers of 8-32 KiB (`patterns
// buf-replace`, a hundred pages per class) emptied and overflowed a cache of 4 blocks on most
// calls. The heap counts each class's pages (Heap::class_pages; check_heap_invariants compares
// the count with its pages), and the limit falls back as they go.
TEST_CASE("class caches: the limit grows with the pages the heap holds of the class") {
  RunsOff classes;  // the class pages of 4-32 KiB (plain requests there go to runs pages otherwise)
  Worker w;
  w.run([] {
    const size_t n = 16000;  // the 16 KiB class: 4 blocks to a page, a base limit of 4
    const unsigned cls = size_to_class(n);
    REQUIRE(class_caches_frees(cls));
    const uint32_t base = fcache_limit(cls);
    REQUIRE(base == 4);
    std::vector<void*> blocks;
    for (int i = 0; i < 400; ++i) blocks.push_back(alloc(n));
    Heap* h = t_heap;  // (made by the first allocation)
    std::vector<Page*> pages;
    for (void* b : blocks)
      if (std::find(pages.begin(), pages.end(), page_of_ptr(b)) == pages.end()) pages.push_back(page_of_ptr(b));
    REQUIRE(pages.size() >= 100);
    uint32_t reserved = 0;
    for (Page* p : pages) reserved += p->reserved;
    CHECK(h->class_blocks[cls - kCachedFirst] == reserved);
    const uint32_t limit = fcache_limit_of(h, cls);
    CHECK(limit == std::min<uint32_t>(64, reserved / 8));
    CHECK(limit >= 40);
    // One block from each of 40 full pages: all 40 wait in the cache, their pages still full.
    std::vector<void*> freed;
    for (Page* p : pages) {
      if (freed.size() == 40) break;
      if (page_flags(p) != kPageInFull) continue;
      auto it = std::find_if(blocks.begin(), blocks.end(), [&](void* b) { return b != nullptr && page_of_ptr(b) == p; });
      REQUIRE(it != blocks.end());
      freed.push_back(*it);
      dealloc(*it);
      *it = nullptr;
      CHECK(page_flags(p) == kPageInFull);
    }
    REQUIRE(freed.size() == 40);
    CHECK(fcache_held(h, cls) == 40);
    // They come back to the next allocations of the class, the last freed first.
    for (size_t i = 0; i < freed.size(); ++i) {
      void* b = alloc(n);
      CHECK(b == freed[freed.size() - 1 - i]);
      blocks.push_back(b);
    }
    CHECK(fcache_held(h, cls) == 0);
    CHECK(check_heap_invariants(h) == 0);
    for (void* b : blocks)
      if (b != nullptr) dealloc(b);
    trim(0);
    CHECK(check_heap_invariants(h) == 0);
    CHECK(h->class_blocks[cls - kCachedFirst] <= 4);  // the class's last page, kept
    CHECK(fcache_limit_of(h, cls) == base);
  });
}
