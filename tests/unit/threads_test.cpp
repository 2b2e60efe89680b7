// tests/unit/threads_test.cpp: frees by other threads (thread_free lists, the delayed list of
// full pages), thread exit (abandonment) and reclaim of abandoned segments, and a short
// multi-threaded exchange of blocks.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <set>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace nebula;
using namespace unit;

TEST_CASE("cross-thread: blocks freed by another thread go back to their owner and are reused") {
  settle();
  ensure_heap();  // the main thread's heap is live, so its remote frees are counted
  t_heap->fc_on = false;
  const size_t kN = 10000, kSize = 48;
  const unsigned cls = size_to_class(kSize);
  const size_t per_page = kSliceSize / kClassSize[cls];
  Worker a;
  std::vector<void*> blocks(kN);
  Heap* ha = nullptr;
  a.run([&] {
    for (size_t i = 0; i < kN; ++i) {
      blocks[i] = alloc(kSize);
      fill(blocks[i], kSize, i);
    }
    ha = t_heap;
  });
  REQUIRE(ha != nullptr);
  REQUIRE(ha != t_heap);
  std::set<Page*> pages;
  for (void* p : blocks) pages.insert(page_of_ptr(p));
  CHECK(pages.size() == (kN + per_page - 1) / per_page);
  for (Page* pg : pages) {
    CHECK(segment_of(pg)->owner_heap.load() == ha);
    CHECK(segment_of(pg)->thread_id.load() == ha->thread_id);
    CHECK(segment_of(pg)->thread_id.load() != os::thread_id());
  }

  // The main thread frees 9,900 blocks, a thread that never allocated frees the other 100.
  nebula_mem_stats st0 = stats();
  int corrupt = 0;
  for (size_t i = 0; i < kN - 100; ++i) {
    if (!check_fill(blocks[i], kSize, i)) ++corrupt;
    dealloc(blocks[i]);
  }
  CHECK(corrupt == 0);
  nebula_mem_stats st1 = stats();
  CHECK(st1.remote_frees >= st0.remote_frees + (kN - 100));
  // The main thread's foreign cache is off (it has not freed other threads' blocks often
  // enough): every block went back to its page.
  CHECK(fcache_held(t_heap, cls) == 0);
  CHECK((t_heap->fc_active & (uint64_t{1} << cls)) == 0);
  std::thread c([&] {
    for (size_t i = kN - 100; i < kN; ++i) dealloc(blocks[i]);
  });
  c.join();
  // Counted although that thread has no heap (a consumer that only frees).
  CHECK(stats().remote_frees >= st1.remote_frees + 100);

  // Every freed block waits either on its page's thread_free list or (for pages that were in
  // the full list) on the owner heap's delayed list. used still counts them all.
  size_t on_pages = 0;
  for (Page* pg : pages) on_pages += list_len(thread_free_head(pg));
  size_t delayed = list_len(ha->delayed_free.load());
  CHECK(on_pages + delayed == kN);
  CHECK(delayed >= 1);  // the first remote free into each full page is announced
  for (Page* pg : pages) {
    PageCounts pc = page_counts(pg);
    CHECK(pc.used >= pc.thread_free);
    CHECK(delay_state(pg) != kDelayUse);  // announced: back to 'none'
  }

  // The owner allocates again: it collects the delayed and thread_free lists and reuses the
  // same pages; only blocks never handed out before may be new.
  std::vector<void*> again(kN);
  a.run([&] {
    for (size_t i = 0; i < kN; ++i) again[i] = alloc(kSize);
  });
  CHECK(ha->delayed_free.load() == nullptr);
  std::set<void*> old(blocks.begin(), blocks.end());
  size_t outside = 0, reused = 0;
  for (void* p : again) {
    if (pages.count(page_of_ptr(p)) == 0) ++outside;
    if (old.count(p) != 0) ++reused;
  }
  CHECK(outside == 0);
  CHECK(reused >= kN - (pages.size() * per_page - kN));
  a.run([&] {
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* p : again) dealloc(p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
  a.finish();
  settle();
}

// A thread with a heap that frees another thread's block keeps it in its foreign cache of the
// class; once the cache holds half its limit, the direct table points at it and the thread's
// next allocations of the class pop the cached blocks on the fast path, the last freed first.
// The owner's page still counts the blocks as used all along.
TEST_CASE("foreign cache: a block freed by a non-owner is that thread's next block of the class") {
  settle();
  ensure_heap();
  Worker a;
  const unsigned cls = size_to_class(100);
  const uint32_t want = fcache_direct_min(cls);
  REQUIRE(want > 1);
  std::vector<void*> blocks(want);
  a.run([&] {
    for (auto& b : blocks) b = alloc(100);
  });
  void* p = blocks.back();
  Page* page = page_of_ptr(p);
  REQUIRE(page->size_class == cls);
  const uint32_t used0 = page->used;
  Heap* me = t_heap;
  REQUIRE(me->live);
  me->fc_on = fcache_ready(me);  // as after many remote frees (see "foreign cache: on where ...")
  REQUIRE(segment_of(page)->thread_id.load() != os::thread_id());
  const uint64_t live0 = stats().live_bytes;
  dealloc(blocks[0]);
  CHECK(stats().live_bytes + kClassSize[cls] == live0);  // a cached block is not live
  CHECK(fcache_held(me, cls) == 1);
  CHECK((me->fc_active & (uint64_t{1} << cls)) != 0);
  CHECK(me->direct[(100 + 15) / 16] != &me->fc->page[cls]);  // one block: not yet
  for (uint32_t i = 1; i < want; ++i) dealloc(blocks[i]);
  CHECK(fcache_held(me, cls) == want);
  CHECK(me->direct[(100 + 15) / 16] == &me->fc->page[cls]);  // half the limit: now
  CHECK(in_foreign_cache(page, static_cast<Block*>(p)));
  CHECK(page_of_ptr(blocks[0])->used >= 1);    // still out, as far as the pages know
  CHECK(thread_free_head(page) == nullptr);    // not sent back
  for (uint32_t i = 1; i < want; ++i) {        // all but the first freed, the last freed first
    void* q = alloc(97);                       // same class
    CHECK(q == blocks[want - i]);
  }
  void* q = alloc(97);
  CHECK(q == blocks[0]);
  for (uint32_t i = 1; i < want; ++i) dealloc(blocks[i]);  // back into the cache (direct still)
  CHECK(fcache_held(me, cls) == want - 1);
  for (uint32_t i = 1; i < want; ++i) CHECK(alloc(100) == blocks[want - i]);
  CHECK(fcache_held(me, cls) == 0);
  CHECK(page->used == used0);
  // The cache is empty: the next allocation of the class goes back to the pages.
  void* r = alloc(100);
  CHECK(page_of_ptr(r) != page);
  CHECK((me->fc_active & (uint64_t{1} << cls)) == 0);
  CHECK(me->direct[(100 + 15) / 16] != &me->fc->page[cls]);
  dealloc(r);
  a.run([&] {
    for (void* b : blocks) dealloc(b);  // the owner frees them for good (q is blocks[0])
    CHECK(check_heap_invariants(t_heap) == 0);
  });
  a.finish();
  me->fc_on = false;
  settle();
}

// Below half its limit the cache waits, but a class whose page runs out (or that has none)
// takes its cached blocks first, and from then on through the fast path.
TEST_CASE("foreign cache: a class that runs out of its page takes the cached blocks first") {
  settle();
  Worker a;
  void* x = nullptr;
  void* y = nullptr;
  a.run([&] {
    x = alloc(300);
    y = alloc(300);
  });
  const unsigned cls = size_to_class(300);
  REQUIRE(fcache_direct_min(cls) > 2);
  Worker b;
  b.run([&] {
    void* first = alloc(kDirect2Max + 1);  // a heap, with no page of the class
    Heap* h = t_heap;
    h->fc_on = fcache_ready(h);
    REQUIRE(h->queues[cls].first == nullptr);
    dealloc(x);
    dealloc(y);
    CHECK(fcache_held(h, cls) == 2);
    CHECK((h->fc_direct & (uint64_t{1} << cls)) == 0);  // 2 blocks: the cache waits
    CHECK(alloc(300) == y);                              // no page: the cache first
    CHECK((h->fc_direct & (uint64_t{1} << cls)) != 0);
    CHECK(h->direct[(300 + 15) / 16] == &h->fc->page[cls]);
    const uint64_t slow = h->stats.generic_calls;
    CHECK(alloc(300) == x);                              // the fast path
    CHECK(h->stats.generic_calls == slow);
    void* z = alloc(300);                                // dry: back to the pages
    CHECK(z != x);
    CHECK(z != y);
    CHECK((h->fc_active & (uint64_t{1} << cls)) == 0);
    CHECK((h->fc_direct & (uint64_t{1} << cls)) == 0);
    CHECK(h->direct[(300 + 15) / 16] == h->queues[cls].first);
    dealloc(z);
    dealloc(first);
    h->fc_on = false;
  });
  b.finish();
  a.run([&] {
    dealloc(x);
    dealloc(y);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
  a.finish();
  settle();
}

// The cache is used by a thread that frees other threads' blocks often: it goes on above 4 per
// slow-path allocation over the last 64 of them, and off below 1.
TEST_CASE("foreign cache: on where remote frees are frequent, off where they are rare") {
  settle();
  Worker a;
  std::vector<void*> blocks(400);
  a.run([&] {
    for (auto& p : blocks) p = alloc(200);
  });
  Worker b;
  b.run([&] {
    std::vector<void*> mine;
    mine.push_back(alloc(kDirect2Max + 1));  // b has a heap; sizes above kDirect2Max always take the slow path
    Heap* h = t_heap;
    CHECK_FALSE(h->fc_on);
    CHECK(h->fc == nullptr);                // its descriptors are not mapped until it turns on
    for (void* p : blocks) dealloc(p);     // 400 remote frees, sent home (the cache is off)
    CHECK(fcache_held(h, size_to_class(200)) == 0);
    for (int i = 0; i < 64; ++i) mine.push_back(alloc(kDirect2Max + 1));
    CHECK(h->fc_on);                        // 400 > 4 x 64
    CHECK(h->fc != nullptr);
    for (int i = 0; i < 64; ++i) mine.push_back(alloc(kDirect2Max + 1));
    CHECK_FALSE(h->fc_on);                  // none since
    CHECK(h->fc != nullptr);                // kept until the heap goes back to the pool
    for (void* p : mine) dealloc(p);
  });
  b.finish();
  a.run([&] { CHECK(check_heap_invariants(t_heap) == 0); });
  a.finish();
  settle();
}

// The cache of a class holds at most about 16 KiB of blocks: beyond, half goes back to the pages.
// When the caching thread exits, every cached block goes back to its page.
TEST_CASE("foreign cache: bounded, and emptied when its thread exits") {
  settle();
  const size_t kN = 300, kSize = 1000;
  Worker a;
  std::vector<void*> blocks(kN);
  Heap* ha = nullptr;
  a.run([&] {
    for (auto& p : blocks) p = alloc(kSize);
    ha = t_heap;
  });
  std::set<Page*> pages;
  for (void* p : blocks) pages.insert(page_of_ptr(p));
  const unsigned cls = size_to_class(kSize);
  const uint32_t limit = static_cast<uint32_t>(16384 / kClassSize[cls]);
  Worker b;
  b.run([&] {
    dealloc(alloc(64));  // b has a heap
    t_heap->fc_on = fcache_ready(t_heap);
    for (void* p : blocks) {
      dealloc(p);
      CHECK(fcache_held(t_heap, cls) <= limit);
    }
    CHECK(fcache_held(t_heap, cls) >= 1);
  });
  auto waiting = [&] {
    size_t n = list_len(ha->delayed_free.load());
    for (Page* pg : pages) n += list_len(thread_free_head(pg));
    return n;
  };
  size_t before_exit = waiting();
  CHECK(before_exit < kN);
  CHECK(before_exit >= kN - limit);
  b.finish();  // thread exit: the cache goes home
  CHECK(waiting() == kN);
  a.run([&] {
    void* p = alloc(kSize);  // collects
    dealloc(p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
  a.finish();
  settle();
}

// A page that runs out carves more while its carved part is under twice its live blocks, except
// when other threads have freed at least 1/8 of its blocks into it: those are taken first, so
// that a producer whose blocks a consumer frees reuses them instead of touching new memory.
TEST_CASE("cross-thread: a page that runs out takes the blocks other threads freed into it before carving more") {
  settle();
  const size_t kSize = 256;
  Worker w;
  Page* page = nullptr;
  std::vector<void*> blocks;
  w.run([&] {
    blocks.push_back(alloc(kSize));
    page = page_of_ptr(blocks[0]);
    while (page->capacity < 100 || page->free != nullptr) {
      void* p = alloc(kSize);
      REQUIRE(page_of_ptr(p) == page);
      blocks.push_back(p);
    }
  });
  REQUIRE(page->capacity < page->reserved);
  const size_t capacity = page->capacity, pending = page->reserved / 8 + 8;
  REQUIRE(capacity < 2 * (capacity - pending));  // live blocks alone would carve more
  std::vector<void*> freed(blocks.end() - static_cast<long>(pending), blocks.end());
  blocks.resize(blocks.size() - pending);
  std::thread t([&] {  // no heap: every free goes to the page's thread_free
    for (void* p : freed) dealloc(p);
  });
  t.join();
  REQUIRE(tf_count(page->thread_free.load()) == pending);
  CHECK(page->remote_seen == 0);  // nothing collected from another thread yet
  w.run([&] {
    void* p = alloc(kSize);
    CHECK(page_of_ptr(p) == page);
    CHECK(page->remote_seen == 1);  // marked by the collect (the pass-over test relies on it)
    CHECK(page->capacity == capacity);
    CHECK(std::find(freed.begin(), freed.end(), p) != freed.end());
    CHECK(tf_count(page->thread_free.load()) == 0);
    blocks.push_back(p);
    for (void* q : blocks) dealloc(q);
  });
}

TEST_CASE("cross-thread: a free into a full page reaches the owner through the delayed list") {
  settle();
  ensure_heap();
  const size_t kSize = 256;
  const size_t per_page = kSliceSize / kSize;
  Worker a;
  std::vector<void*> blocks;
  Heap* ha = nullptr;
  Page* page = nullptr;
  Page* page2 = nullptr;
  a.run([&] {
    for (size_t i = 0; i < per_page + 1; ++i) blocks.push_back(alloc(kSize));
    ha = t_heap;
    page = page_of_ptr(blocks[0]);
    page2 = page_of_ptr(blocks[per_page]);
  });
  for (size_t i = 0; i < per_page; ++i) REQUIRE(page_of_ptr(blocks[i]) == page);
  REQUIRE(page2 != page);
  CHECK((page->flags & kPageInFull) != 0);
  CHECK(delay_state(page) == kDelayUse);
  CHECK(page->used == per_page);

  // First remote free: announced on the owner's delayed list; the page goes back to 'none'.
  dealloc_from_bare_thread(blocks[5]);
  CHECK(ha->delayed_free.load() == blocks[5]);
  CHECK(delay_state(page) == kDelayNone);
  CHECK(thread_free_head(page) == nullptr);
  CHECK((page->flags & kPageInFull) != 0);
  CHECK(page->used == per_page);
  // Second remote free: on the page's thread_free list.
  dealloc_from_bare_thread(blocks[6]);
  CHECK(thread_free_head(page) == blocks[6]);
  CHECK(tf_count(page->thread_free.load()) == 1);
  CHECK(ha->delayed_free.load() == blocks[5]);

  // The owner's next slow-path call takes the page out of the full list.
  a.run([&] {
    void* big = alloc(kMediumMax + 1);
    CHECK(ha->delayed_free.load() == nullptr);
    CHECK((page->flags & kPageInFull) == 0);
    CHECK(page->used == per_page - 1);                // the delayed block, freed locally
    CHECK(list_contains(page->local_free, blocks[5]));
    CHECK(thread_free_head(page) == blocks[6]);       // still waiting for a collect
    PageCounts pc = page_counts(page);
    CHECK(pc.used == per_page - 1);
    CHECK(pc.thread_free == 1);
    CHECK(pc.local_free == 1);
    CHECK(pc.consistent());
    CHECK(check_heap_invariants(t_heap) == 0);
    dealloc(big);
  });

  // A large block freed by another thread also goes through the delayed list.
  void* large = nullptr;
  uint64_t large_freed0 = 0;
  a.run([&] {
    large = alloc(300000);
    large_freed0 = t_heap->stats.pages_freed[kind_index(PageKind::kLarge)];
  });
  Page* lp = page_of_ptr(large);
  CHECK(lp->kind == PageKind::kLarge);
  CHECK(delay_state(lp) == kDelayUse);
  dealloc(large);
  CHECK(ha->delayed_free.load() == large);
  CHECK(lp->kind == PageKind::kLarge);  // not freed until the owner looks
  a.run([&] {
    void* q = alloc(kSmallMax);  // a class with no page yet: the slow path
    CHECK(t_heap->stats.pages_freed[kind_index(PageKind::kLarge)] == large_freed0 + 1);
    CHECK(ha->delayed_free.load() == nullptr);
    dealloc(q);
    for (size_t i = 0; i < blocks.size(); ++i)
      if (i != 5 && i != 6) dealloc(blocks[i]);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
  a.finish();
  settle();
}

// A page that other threads have freed blocks into (its thread_free line then lives in their
// caches) and that runs out goes to the back of its queue once, keeping its delayed-free state
// as it is; only when it runs out again on the next pass does it go to the full list (with the
// CAS that moves its state to kDelayUse). A page no other thread frees into goes to the full list
// at once, as before.
TEST_CASE("cross-thread: a page other threads free into goes to the back of its queue once before the full list") {
  settle();
  const size_t kSize = 256;
  const unsigned cls = size_to_class(kSize);
  const size_t per_page = kSliceSize / kSize;
  Worker w;
  w.run([&] {
    std::vector<void*> blocks;
    for (size_t i = 0; i < 2 * per_page; ++i) blocks.push_back(alloc(kSize));
    Page* p1 = page_of_ptr(blocks[0]);
    Page* p2 = page_of_ptr(blocks[per_page]);
    REQUIRE(p1 != p2);
    REQUIRE(page_of_ptr(blocks[2 * per_page - 1]) == p2);
    PageQueue* q = &t_heap->queues[cls];
    CHECK((page_flags(p1) & kPageInFull) != 0);  // never freed into by another thread: full at once
    CHECK(p1->remote_seen == 0);
    // p1 leaves the full list for the back of the queue with 40 free blocks (not a "poor" page,
    // which would send the walk on to p2 again).
    for (size_t i = 0; i < 40; ++i) dealloc(blocks[i]);
    CHECK((page_flags(p1) & kPageInFull) == 0);
    REQUIRE(q->first == p2);
    REQUIRE(q->last == p1);
    REQUIRE(p2->free == nullptr);
    REQUIRE(p2->capacity == p2->reserved);
    p2->remote_seen = 1;  // as if it had collected blocks other threads freed (tested above)

    void* a = alloc(kSize);
    CHECK(page_of_ptr(a) == p1);
    CHECK((page_flags(p2) & kPageInFull) == 0);
    CHECK(p2->passed_over == 1);
    CHECK(delay_state(p2) == kDelayNone);
    CHECK(q->first == p1);
    CHECK(q->last == p2);
    CHECK(p1->passed_over == 0);

    std::vector<void*> again{a};
    while (p1->free != nullptr || p1->local_free != nullptr) again.push_back(alloc(kSize));
    CHECK(again.size() == 40);
    void* b = alloc(kSize);  // p1 runs out (full), p2 runs out a second time (full), a new page
    Page* p3 = page_of_ptr(b);
    CHECK(p3 != p1);
    CHECK(p3 != p2);
    CHECK((page_flags(p1) & kPageInFull) != 0);
    CHECK((page_flags(p2) & kPageInFull) != 0);
    CHECK(delay_state(p2) == kDelayUse);
    CHECK(q->first == p3);
    CHECK(check_heap_invariants(t_heap) == 0);
    // A free takes p2 out of the full list: it may be passed over once again.
    void* last = blocks.back();
    REQUIRE(page_of_ptr(last) == p2);
    dealloc(last);
    blocks.pop_back();
    CHECK((page_flags(p2) & kPageInFull) == 0);
    CHECK(p2->passed_over == 0);
    blocks.erase(blocks.begin(), blocks.begin() + 40);
    blocks.insert(blocks.end(), again.begin(), again.end());
    blocks.push_back(b);
    for (void* x : blocks) dealloc(x);
  });
}

TEST_CASE("thread exit: segments are abandoned, reclaimed by another thread, and freed") {
  settle();
  const size_t seg0 = segments_now();
  const size_t committed0 = committed_now();
  REQUIRE(abandoned_count() == 0);
  const size_t ab0 = g_counters.abandoned.load();
  const size_t rc0 = g_counters.reclaimed.load();
  struct Left {
    void* p;
    size_t n;
    uint64_t id;
  };
  std::vector<Left> left;
  std::thread t([&] {
    uint64_t id = 0;
    auto batch = [&](size_t count, size_t n) {
      for (size_t i = 0; i < count; ++i, ++id) {
        void* p = alloc(n);
        fill_edges(p, n, id);
        if (i % 2 == 0) dealloc(p);
        else left.push_back({p, n, id});
      }
    };
    batch(3000, 100);
    batch(60, 20000);
    batch(4, 300000);
  });
  t.join();
  CHECK(g_counters.abandoned.load() > ab0);
  CHECK(abandoned_count() >= 1);
  std::set<Segment*> t_segments;
  int bad = 0;
  for (const Left& l : left) {
    Segment* s = segment_of(l.p);
    t_segments.insert(s);
    if (s->thread_id.load() != 0 || s->owner_heap.load() != nullptr || page_of(s, l.p)->next != nullptr) ++bad;
    if (!check_edges(l.p, l.n, l.id)) ++bad;
  }
  CHECK(bad == 0);
  CHECK(g_counters.abandoned.load() - ab0 == t_segments.size());

  // Another thread allocates: with no segment of its own it adopts an abandoned one.
  Segment* u_first_segment = nullptr;
  std::thread u([&] {
    std::vector<void*> v;
    for (int i = 0; i < 500; ++i) v.push_back(alloc(100));
    u_first_segment = segment_of(v[0]);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* p : v) dealloc(p);
  });
  u.join();
  CHECK(g_counters.reclaimed.load() > rc0);
  CHECK(t_segments.count(u_first_segment) == 1);

  // The leftovers are intact and the main thread can free them (their segments are abandoned
  // again, since the thread that adopted one exited too).
  bad = 0;
  for (const Left& l : left) {
    if (!check_edges(l.p, l.n, l.id)) ++bad;
    dealloc(l.p);
  }
  CHECK(bad == 0);
  settle();
  CHECK(abandoned_count() == 0);
  CHECK(segments_now() == seg0);
  CHECK(committed_now() <= committed0 + kSliceSize);
  CHECK(g_counters.reclaimed.load() - rc0 >= t_segments.size());
}

// An exiting thread collects its pages and purges its free slices before it takes the heaps
// lock, which it holds only to hand its segments over: threads that exit together do not wait
// for each other's madvise calls. Here the test holds the heaps lock (the stats walk takes it)
// while a thread exits: the thread's purge comes through meanwhile, and its hand-over waits.
namespace exit_window {
constexpr size_t kMiB = size_t{1} << 20;
std::atomic<bool> go{false};
bool purged_in_window = false;
size_t purged0 = 0;
}  // namespace exit_window

TEST_CASE("thread exit: the free slices are purged before the heaps lock is taken") {
  using exit_window::go, exit_window::purged_in_window, exit_window::purged0, exit_window::kMiB;
  settle();
  g_exit_reuse_ms.store(0);  // nothing is kept for a next thread: every free slice is purged
  go = false;
  purged_in_window = false;
  std::atomic<bool> ready{false};
  std::atomic<size_t> resident{0};
  std::vector<void*> kept;
  std::thread t([&] {
    kept = segments_with_free_slices(48 * kMiB, 0x33);
    size_t n = 0;
    for (void* p : kept) {
      Segment* s = segment_of(p);
      n += static_cast<size_t>(popcount64(s->free_slices & s->dirty_slices & ~uint64_t{1}));
    }
    resident = n * kSliceSize;
    ready = true;
    while (!go) usleep(100);
  });  // exits when `go` is set
  while (!ready) usleep(100);
  REQUIRE(resident >= 8 * kMiB);
  purged0 = g_counters.purged.load();
  for_each_live_heap(
      [](Heap*, void*) {
        if (go) return;  // (once)
        go = true;
        for (int i = 0; i < 5000 && g_counters.purged.load() < purged0 + 8 * kMiB; ++i) usleep(1000);
        purged_in_window = g_counters.purged.load() >= purged0 + 8 * kMiB;
      },
      nullptr, nullptr);
  t.join();
  CHECK(go);
  CHECK(purged_in_window);
  for (void* p : kept) {
    CHECK(static_cast<uint8_t*>(p)[100] == 0x33);
    dealloc(p);
  }
  settle();
}

TEST_CASE("thread exit: free slices stay resident for the next thread, within an allowance, until due") {
  settle();
  REQUIRE(abandoned_count() == 0);
  REQUIRE(abandoned_kept_bytes() == 0);
  g_exit_reuse_ms.store(0);  // no thread has come after an exit yet
  auto resident_free = [](Segment* s) { return s->free_slices & s->dirty_slices & ~uint64_t{1}; };
  // A thread fills pages of six classes, keeps one block (so that its segment stays), frees
  // the rest and exits.
  void* keep = nullptr;
  Segment* seg = nullptr;
  auto task = [&] {
    std::vector<void*> v;
    for (size_t n = 64; n <= 2048; n *= 2)
      for (int i = 0; i < 100; ++i) {
        void* p = alloc(n);
        memset(p, 0x5a, n);
        v.push_back(p);
      }
    if (keep == nullptr) {
      keep = alloc(100);
      memset(keep, 0x44, 100);
    }
    seg = segment_of(v[0]);
    for (void* p : v) dealloc(p);
  };
  // The first exit has no thread after it to go by: its free slices are purged at once.
  std::thread t0(task);
  t0.join();
  REQUIRE(seg == segment_of(keep));
  CHECK(seg->owner_heap.load() == nullptr);
  CHECK(resident_free(seg) == 0);
  CHECK(abandoned_kept_bytes() == 0);
  // The next thread adopts that segment soon after the exit: threads come and go here, so its
  // own exit keeps its free slices for the thread after it.
  std::thread t(task);
  t.join();
  CHECK(g_exit_reuse_ms.load() != 0);
  REQUIRE(seg == segment_of(keep));
  CHECK(seg->owner_heap.load() == nullptr);
  const uint64_t kept = resident_free(seg);
  CHECK(popcount64(kept) >= 6);  // not purged at the exit
  CHECK(seg->kept_slices == static_cast<uint32_t>(popcount64(kept)));
  CHECK(abandoned_kept_bytes() == static_cast<size_t>(popcount64(kept)) * kSliceSize);

  // The next thread adopts the segment and makes its page on the kept slices.
  std::thread u([&] {
    void* p = alloc(64);
    CHECK(segment_of(p) == seg);
    CHECK(!page_of_ptr(p)->is_clean);
    CHECK((kept & (uint64_t{1} << (page_of_ptr(p) - seg->pages))) != 0);
    CHECK(abandoned_kept_bytes() == 0);  // the adopting heap purges them from now on
    dealloc(p);
  });
  u.join();
  CHECK(seg->owner_heap.load() == nullptr);
  REQUIRE(seg->kept_slices != 0);

  // Left alone for kExitKeepMs after the exit (the next thread comes soon after), then purged
  // by whoever looks first (maintenance, the next exit).
  const uint64_t left_at = seg->exit_ms;
  REQUIRE(left_at != 0);
  REQUIRE(seg->purge_at_ms > left_at + kExitKeepMs);
  const uint64_t before = resident_free(seg);
  abandoned_purge_kept(left_at + kExitKeepMs - 1, false);
  CHECK(resident_free(seg) == before);
  CHECK(abandoned_kept_bytes() != 0);
  // The purge marks the segment and releases the list's lock for its madvise calls: meanwhile
  // no lock is held and no heap adopts the segment.
  REQUIRE(abandoned_count() == 1);
  static Segment* purging;
  static int window_calls, window_locks, window_adopted, window_marked;
  purging = seg;
  window_calls = window_locks = window_adopted = window_marked = 0;
  g_purge_window_hook = [](PurgeWindow where) {
    if (where != PurgeWindow::kKeptSlices) return;
    ++window_calls;
    window_locks = static_cast<int>(t_locks_held);
    window_marked = purging->kept_purging;
    if (window_locks == 0 && t_heap->live) window_adopted = segment_reclaim_one(t_heap, false) ? 1 : 0;
  };
  REQUIRE(t_heap->live);  // (settle made it)
  abandoned_purge_kept(left_at + kExitKeepMs, false);
  g_purge_window_hook = nullptr;
  CHECK(window_calls == 1);
  CHECK(window_locks == 0);
  CHECK(window_marked == 1);
  CHECK(window_adopted == 0);
  CHECK(seg->kept_purging == 0);
  CHECK(abandoned_count() == 1);
  CHECK(resident_free(seg) == 0);
  CHECK(seg->kept_slices == 0);
  CHECK(abandoned_kept_bytes() == 0);
  CHECK(static_cast<uint8_t*>(keep)[99] == 0x44);  // the live block is untouched

  // A thread that leaves more than the allowance free and resident keeps what fits (its first
  // segment whole, the lowest slices of the second) and purges the rest at its exit.
  std::vector<void*> kept_blocks;
  std::vector<Segment*> segs;
  std::thread w([&] {
    std::vector<void*> v;
    for (int i = 0; i < 110; ++i) {  // 60 blocks of 64 KiB fill a segment (15 pages of 4 slices)
      void* p = alloc(64 * 1024);
      memset(p, 0x33, 64 * 1024);
      if (std::find(segs.begin(), segs.end(), segment_of(p)) == segs.end()) {
        segs.push_back(segment_of(p));
        kept_blocks.push_back(p);  // one block keeps each segment
      } else {
        v.push_back(p);
      }
    }
    for (void* p : v) dealloc(p);
    size_t resident_slices = 0;
    for (Segment* sg : segs) resident_slices += static_cast<size_t>(popcount64(resident_free(sg)));
    CHECK(resident_slices * kSliceSize > kExitKeepBytes);
  });
  w.join();
  REQUIRE(segs.size() == 2);
  size_t kept_slices = 0, resident_slices = 0;
  for (Segment* sg : segs) {
    CHECK(sg->owner_heap.load() == nullptr);
    kept_slices += sg->kept_slices;
    resident_slices += static_cast<size_t>(popcount64(resident_free(sg)));
  }
  CHECK(kept_slices * kSliceSize == kExitKeepBytes);
  CHECK(resident_slices == kept_slices);  // the rest was purged
  CHECK(abandoned_kept_bytes() == kExitKeepBytes);
  for (void* p : kept_blocks) CHECK(static_cast<uint8_t*>(p)[1000] == 0x33);
  dealloc(keep);
  for (void* p : kept_blocks) dealloc(p);
  settle();
  CHECK(abandoned_count() == 0);
  CHECK(abandoned_kept_bytes() == 0);
}

TEST_CASE("threads: blocks exchanged between threads stay intact") {
  settle();
  const size_t seg0 = segments_now();
  constexpr int kSlots = 2048;
  constexpr int kThreads = 4;
  constexpr int kOps = 30000;
  static std::atomic<void*> slots[kSlots];
  for (auto& s : slots) s.store(nullptr);
  std::atomic<int> errors{0};
  auto stamp = [](void* p, size_t n) {
    auto* w = static_cast<uint64_t*>(p);
    w[0] = n;
    w[1] = reinterpret_cast<uintptr_t>(p) ^ (n * 0x9e3779b97f4a7c15ull);
    static_cast<uint8_t*>(p)[n - 1] = static_cast<uint8_t>(n * 13);
  };
  auto verify = [](void* p) {
    auto* w = static_cast<uint64_t*>(p);
    size_t n = w[0];
    if (n < 24 || n > (1u << 20)) return false;
    if (w[1] != (reinterpret_cast<uintptr_t>(p) ^ (n * 0x9e3779b97f4a7c15ull))) return false;
    if (static_cast<uint8_t*>(p)[n - 1] != static_cast<uint8_t>(n * 13)) return false;
    return usable_size(p) >= n;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + static_cast<unsigned>(t));
      // Three frees in four are remote. Whether a thread's foreign cache turns on by itself
      // depends on how the threads interleave (a thread that runs alone frees its own blocks):
      // switch it on from the start, so that its paths always take part in the exchange (TSAN
      // runs this test); the heap's own rule may turn it off again.
      dealloc(alloc(16));
      t_heap->fc_on = fcache_ready(t_heap);
      for (int i = 0; i < kOps; ++i) {
        unsigned r = static_cast<unsigned>(rng() % 1000);
        size_t n = r < 950 ? 24 + rng() % 500 : r < 998 ? 24 + rng() % 65536 : 200000 + rng() % 100000;
        void* p = alloc(n);
        if (p == nullptr) {
          errors++;
          continue;
        }
        stamp(p, n);
        if (rng() % 8 == 0) {  // a local free now and then
          if (!verify(p)) errors++;
          dealloc(p);
          continue;
        }
        void* old = slots[rng() % kSlots].exchange(p);
        if (old != nullptr) {
          if (!verify(old)) errors++;
          dealloc(old);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& s : slots) {
    void* p = s.exchange(nullptr);
    if (p == nullptr) continue;
    if (!verify(p)) errors++;
    dealloc(p);
  }
  CHECK(errors.load() == 0);
  settle();
  CHECK(abandoned_count() == 0);
  CHECK(segments_now() == seg0);
  CHECK(check_heap_invariants(t_heap) == 0);
}

TEST_CASE("fork: the child adopts the segments of threads that do not exist in it") {
  settle();
  REQUIRE(segments_now() == 0);
  Worker a;
  const size_t kN = 2000;
  const size_t per_page = kSliceSize / 128;
  std::vector<void*> blocks;
  void* large = nullptr;
  a.run([&] {
    for (size_t i = 0; i < kN; ++i) {
      void* p = alloc(128);
      fill(p, 128, i);
      blocks.push_back(p);
    }
    large = alloc(300000);
    fill_edges(large, 300000, 99);
  });
  // One block of a full page of A's goes on A's delayed list.
  Page* first_page = page_of_ptr(blocks[0]);
  REQUIRE((first_page->flags & kPageInFull) != 0);
  dealloc_from_bare_thread(blocks[per_page / 2]);
  REQUIRE(t_heap != nullptr);
  ChildResult r = run_child([&] {
    int fail = 0;
    if (abandoned_count() == 0) fail |= 1;  // A's segments are orphans in the child
    for (size_t i = 0; i < kN; ++i) {
      if (i == per_page / 2) continue;
      if (!check_fill(blocks[i], 128, i)) fail |= 2;
      dealloc(blocks[i]);
    }
    if (!check_edges(large, 300000, 99)) fail |= 2;
    dealloc(large);
    std::vector<void*> mine;
    for (int i = 0; i < 5000; ++i) mine.push_back(alloc(128));
    for (void* p : mine) dealloc(p);
    trim(0);
    if (abandoned_count() != 0) fail |= 4;
    if (segments_now() != 0) fail |= 8;
    _exit(fail);
  });
  check_child_passed(r);
  // The parent is unaffected: A still owns its blocks and frees them.
  a.run([&] {
    for (size_t i = 0; i < kN; ++i) {
      if (i == per_page / 2) continue;
      CHECK(check_fill(blocks[i], 128, i));
      dealloc(blocks[i]);
    }
    dealloc(large);
  });
  a.finish();
  settle();
  CHECK(segments_now() == 0);
}

// A thread that does not exist in the child leaves its spare pages (page_retire) in its
// segments, empty spans flagged kPageSpare and listed nowhere: the child's heap frees them when
// it adopts those segments, and the parent's thread keeps its list.
TEST_CASE("fork: a dead thread's spare pages are freed where its segments are adopted") {
  settle();
  REQUIRE(segments_now() == 0);
  Worker a;
  const size_t per_page = kSliceSize / 128;
  std::vector<void*> blocks;
  Page* spare = nullptr;
  a.run([&] {
    for (size_t i = 0; i < 3 * per_page; ++i) blocks.push_back(alloc(128));
    spare = page_of_ptr(blocks[per_page]);
    for (size_t i = per_page; i < 2 * per_page; ++i) REQUIRE(page_of_ptr(blocks[i]) == spare);
    for (size_t i = per_page; i < 2 * per_page; ++i) dealloc(blocks[i]);
    REQUIRE(t_heap->spare == spare);
  });
  ChildResult r = run_child([&] {
    int fail = 0;
    trim(0);  // adopts A's segment: the spare's span is freed, its other pages are ours
    if (abandoned_count() != 0) fail |= 1;
    if (spare->kind != PageKind::kNone) fail |= 2;
    if (check_heap_invariants(t_heap) != 0) fail |= 4;
    for (size_t i = 0; i < 3 * per_page; ++i)
      if (i < per_page || i >= 2 * per_page) dealloc(blocks[i]);
    trim(0);
    if (segments_now() != 0) fail |= 8;
    _exit(fail);
  });
  check_child_passed(r);
  a.run([&] {
    CHECK(t_heap->spare == spare);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (size_t i = 0; i < 3 * per_page; ++i)
      if (i < per_page || i >= 2 * per_page) dealloc(blocks[i]);
  });
  a.finish();
  settle();
  CHECK(segments_now() == 0);
}

// The span index's counts travel with a segment: large blocks freed by another thread while
// their segment is abandoned wait in their pages until a heap adopts the segment; that heap
// frees their spans and counts what is left (check_heap_invariants compares every count with
// the segments' spans).
TEST_CASE("thread exit: an abandoned segment's large blocks freed by another thread are counted where it is adopted") {
  settle();
  std::vector<void*> big;
  std::thread t([&] {
    for (int i = 0; i < 6; ++i) big.push_back(alloc(size_t{5} * kSliceSize - 4096));
  });
  t.join();
  Segment* s = segment_of(big[0]);
  REQUIRE(s->owner_heap.load() == nullptr);
  REQUIRE(s->large_slices == 30);
  for (int i = 0; i < 6; i += 2) dealloc(big[i]);  // into the abandoned segment
  CHECK(s->large_slices == 30);                      // (waiting in the pages)
  std::thread u([&] {
    ensure_heap();
    heaps_collect_abandoned(true);
    CHECK(s->owner_heap.load() == t_heap);
    CHECK(s->large_slices == 15);
    CHECK(t_heap->large_slices >= 15);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (int i = 1; i < 6; i += 2) dealloc(big[i]);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
  u.join();
  settle();
  CHECK(abandoned_count() == 0);
}

// The engine's lock (core/base.hpp): mutual exclusion, and a waiter that sleeps on the lock's
// word instead of spinning or yielding in a loop while the holder keeps it.
TEST_CASE("lock: excludes, and a thread that waits for it sleeps until the holder lets go") {
  Lock lock;
  SUBCASE("mutual exclusion, every waiter woken") {
    uint64_t counter = 0;  // plain: only the lock orders the threads' updates
    constexpr int kThreads = 6, kRounds = 20000;
    std::vector<std::thread> ts;
    lock.lock();  // every thread starts on a taken lock: all of them sleep, each must be woken
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&] {
        for (int i = 0; i < kRounds; ++i) {
          lock.lock();
          counter = counter + 1;
          lock.unlock();
        }
        CHECK(t_locks_held == 0);
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    lock.unlock();
    for (auto& t : ts) t.join();
    CHECK(counter == uint64_t{kThreads} * kRounds);
    CHECK(lock.try_lock());
    CHECK_FALSE(lock.try_lock());
    lock.unlock();
    CHECK(t_locks_held == 0);
  }
  SUBCASE("the waiter's CPU time stays far below the time it waits") {
    lock.lock();
    std::atomic<bool> waiting{false}, got{false};
    double cpu_ms = -1;
    std::thread waiter([&] {
      timespec a{}, b{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
      waiting = true;
      lock.lock();
      got = true;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
      lock.unlock();
      cpu_ms = static_cast<double>(b.tv_sec - a.tv_sec) * 1e3 + static_cast<double>(b.tv_nsec - a.tv_nsec) / 1e6;
    });
    while (!waiting) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK_FALSE(got.load());
    lock.unlock();
    waiter.join();
    CHECK(got.load());
    // A lock that spun or yielded in a loop kept the waiter on a core for the 200 ms.
    CHECK(cpu_ms >= 0);
    CHECK(cpu_ms < 40);
    CHECK(t_locks_held == 0);
  }
}
