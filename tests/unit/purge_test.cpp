// tests/unit/purge_test.cpp: giving memory back to the OS: free chunks of the arenas and free
// slices of live segments are purged (madvise) and leave the committed count.
#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "core/options.hpp"
#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {
constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kBlocks = 1024;  // 64 MiB of 64 KiB blocks

// fn(heap) on a new thread, with the purge delay set to delay_ms.
template <class Fn>
void with_heap_delay(int64_t delay_ms, Fn fn) {
  settle();
  const int64_t delay0 = option(Option::kPurgeDelay);
  REQUIRE(option_set(Option::kPurgeDelay, delay_ms));
  Worker w;
  w.run([&] {
    ensure_heap();
    fn(t_heap);
  });
  REQUIRE(option_set(Option::kPurgeDelay, delay0));
  settle();
}

// ... with a purge delay so long that no purge comes from it.
template <class Fn>
void with_heap_no_delay(Fn fn) {
  with_heap_delay(3600000, fn);
}

// The slices of the heap's segments that are in spans.
unsigned slices_in_spans(const Heap* h) {
  unsigned n = 0;
  for (Segment* s = h->segments; s != nullptr; s = s->next)
    n += kSlicesPerSegment - 1 - static_cast<unsigned>(popcount64(s->free_slices & ~uint64_t{1}));
  return n;
}
// 96 MiB more in 64 KiB blocks, then all of them freed but the first block of each segment that
// no block of `live` pins yet (kept in `live`): survivors pin every segment, as a program's
// long-lived objects do, so the freed slices stay in the heap. Returns the heap's segment count.
size_t alloc_then_free_most(std::vector<void*>& live) {
  std::vector<void*> v;
  for (size_t i = 0; i < 96 * kMiB / (64 * 1024); ++i) {
    v.push_back(alloc(64 * 1024));
    REQUIRE(v.back() != nullptr);
    memset(v.back(), 0x66, 64 * 1024);
  }
  const size_t segments = t_heap->segment_count;
  std::set<Segment*> segs;
  for (void* p : live) segs.insert(segment_of(p));
  for (void* p : v) {
    if (segs.insert(segment_of(p)).second) live.push_back(p);
    else dealloc(p);
  }
  return segments;
}
}  // namespace

TEST_CASE("purge: 64 MiB freed then trimmed leaves the committed count and the RSS") {
  settle();
  const size_t c0 = committed_now();
  const size_t p0 = g_counters.purged.load();
  const size_t seg0 = segments_now();
  std::vector<void*> v;
  for (size_t i = 0; i < kBlocks; ++i) {
    void* p = alloc(64 * 1024);
    REQUIRE(p != nullptr);
    memset(p, static_cast<int>(i), 64 * 1024);
    v.push_back(p);
  }
  const size_t c1 = committed_now();
  const uint64_t rss1 = os::resident_bytes();
  CHECK(c1 >= c0 + 64 * kMiB);
  CHECK(segments_now() > seg0);
  for (void* p : v) dealloc(p);
  // Every segment was emptied and freed, but for the one holding the last page of the class
  // (an empty page that is alone in its queue is kept for reuse).
  CHECK(segments_now() <= seg0 + 1);
  CHECK(trim(0) == 1);  // something was purged
  CHECK(segments_now() == seg0);
  CHECK(trim(0) == 0);  // and nothing is left to purge
  const uint64_t rss2 = os::resident_bytes();
  CHECK(g_counters.purged.load() >= p0 + 48 * kMiB);
  CHECK(committed_now() < c0 + 16 * kMiB);
  CHECK(committed_now() == c0);
  if (rss1 != 0) CHECK(rss2 + 40 * kMiB < rss1);
}

TEST_CASE("purge: free slices of live segments are purged, live spans are kept") {
  settle();
  const size_t c0 = committed_now();
  const size_t p0 = g_counters.purged.load();
  std::vector<void*> v;
  for (size_t i = 0; i < kBlocks; ++i) {
    void* p = alloc(64 * 1024);
    REQUIRE(p != nullptr);
    memset(p, 0x11, 64 * 1024);
    v.push_back(p);
  }
  // Keep the first block of each segment alive, free the rest.
  std::set<Segment*> segs;
  std::vector<void*> kept;
  for (void* p : v) {
    if (segs.insert(segment_of(p)).second) kept.push_back(p);
    else dealloc(p);
  }
  CHECK(kept.size() >= 64 * kMiB / kSegmentSize);
  const size_t purge_calls0 = g_counters.purge_calls.load();
  trim(0);
  CHECK(g_counters.purge_calls.load() > purge_calls0);
  CHECK(g_counters.purged.load() > p0);
  // What stays committed: per kept segment its header slice and one medium page.
  const size_t per_segment = kSliceSize + kMediumPageSlices * kSliceSize;
  CHECK(committed_now() <= c0 + kept.size() * per_segment);
  CHECK(committed_now() < c0 + 16 * kMiB);
  for (void* p : kept) {
    Segment* s = segment_of(p);
    CHECK((s->free_slices & s->dirty_slices) == 0);  // nothing free is left resident
    CHECK(static_cast<uint8_t*>(p)[12345] == 0x11);  // the live block is untouched
  }
  for (void* p : kept) dealloc(p);
  settle();
  CHECK(committed_now() == c0);
}

// A program that churns through big buffers (the `large` benchmark: a ring of 4 blocks of 5 to
// 25 MiB, one replaced at a time) keeps the freed runs resident and refills them: while the
// footprint stays within the recent peak of use, nothing is purged. And when it lets go of
// everything (use below 1/16 of the peak), what is beyond `retain` goes back at once.
TEST_CASE("purge: churning big blocks refills resident runs instead of purging them") {
  settle();
  trim(0);
  const size_t p0 = g_counters.purged.load();
  const size_t c0 = committed_now();
  std::vector<void*> ring(4, nullptr);
  uint64_t x = 12345;
  for (int i = 0; i < 40; ++i) {
    void*& slot = ring[static_cast<size_t>(i) % ring.size()];
    dealloc(slot);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    size_t n = (5 + x % 21) * kMiB;
    slot = alloc(n);
    REQUIRE(slot != nullptr);
    memset(slot, i, n);
  }
  // The ring holds 20-100 MiB; between frees the use dips well below the peak, which the old
  // rule (keep at most max(retain, in use)) answered with purges and page faults on reuse.
  CHECK(g_counters.purged.load() - p0 < 64 * kMiB);
  for (void*& p : ring) {
    dealloc(p);
    p = nullptr;
  }
  // Use is now near zero: beyond retain (32 MiB) everything went back without a trim.
  CHECK(committed_now() <= c0 + 32 * kMiB + 8 * kMiB);
  trim(0);
  CHECK(committed_now() == c0);
}

// Rounds of big blocks, each round freed whole (a program that builds its buffers, lets go of
// all of them, and starts again): the first round's end gives back what is beyond `retain` at
// once, as above; the next round takes that memory back clean within a purge delay, so the
// purge was wasted, and the rounds after it keep their memory resident (each purge would have
// faulted the blocks back in: 50 blocks of 2 MiB a round purged 34 of them every round). A
// forced purge (trim) ends the hold.
TEST_CASE("purge: rounds of big blocks freed whole stop purging at each round's end") {
  settle();  // (trim ends any hold left by earlier cases)
  constexpr int kLive = 40;
  const size_t block = 2 * kMiB;
  auto round = [&] {
    void* v[kLive];
    for (auto& p : v) {
      p = alloc(block);
      REQUIRE(p != nullptr);
      static_cast<char*>(p)[0] = 1;
      static_cast<char*>(p)[block - 1] = 1;
    }
    for (void* p : v) dealloc(p);
  };
  const size_t p0 = g_counters.purged.load();
  round();
  const size_t first = g_counters.purged.load() - p0;
  CHECK(first >= 32 * kMiB);  // 40 segments of 2 MiB + a header slice, 32 MiB kept
  for (int i = 0; i < 20; ++i) round();
  const size_t later = g_counters.purged.load() - p0 - first;
  // Each round's end purged as much as the first before the hold: 20 x first.
  CHECK(later < 2 * first);
  trim(0);
  const size_t p1 = g_counters.purged.load();
  round();
  CHECK(g_counters.purged.load() - p1 >= 32 * kMiB);  // no hold after the trim
  settle();
}

// A thread that stops calling the allocator (here a worker waiting for its next job) never runs
// its own maintenance, so the free slices its heap holds would stay resident for as long as it
// waits. Another thread's maintenance purges them once their purge time is a purge delay past
// (not before: an owner that still allocates gets to reuse them first), and never while the
// owner holds its segment lock.
TEST_CASE("purge: a quiet thread's free slices are purged by another thread once overdue") {
  settle();
  Worker w;
  Heap* wh = nullptr;
  std::vector<void*> kept;
  w.run([&] {
    kept = segments_with_free_slices(48 * kMiB, 0x22);
    wh = t_heap;  // made by the first allocation
  });
  REQUIRE(wh != nullptr);
  for (void* p : kept) REQUIRE(segment_of(p)->owner_heap.load() == wh);
  REQUIRE(kept.size() >= 8);
  auto resident_free = [&] {
    size_t n = 0;
    for (void* p : kept) {
      Segment* s = segment_of(p);
      n += static_cast<size_t>(popcount64(s->free_slices & s->dirty_slices & ~uint64_t{1}));
    }
    return n * kSliceSize;
  };
  REQUIRE(resident_free() >= 32 * kMiB);
  const uint64_t due = wh->purge_due_ms.load();
  REQUIRE(due != 0);
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  ensure_heap();
  // The passes are paced process-wide (one per purge delay), and an earlier test's maintenance
  // may have set the pace by a clock of its own: each call below starts from no pace.
  // Due, but not overdue: the owner may still come back and reuse them.
  g_purge_idle_next_ms.store(0);
  heaps_purge_idle(t_heap, due, false);
  CHECK(resident_free() >= 32 * kMiB);
  // Overdue while the owner is at work on its segments: left alone.
  wh->seg_lock.lock();
  g_purge_idle_next_ms.store(0);
  heaps_purge_idle(t_heap, due + delay + 1, false);
  wh->seg_lock.unlock();
  CHECK(resident_free() >= 32 * kMiB);
  // Overdue and the owner quiet: purged by this thread.
  const size_t p0 = g_counters.purged.load();
  g_purge_idle_next_ms.store(0);
  heaps_purge_idle(t_heap, due + 2 * delay + 2, false);
  CHECK(resident_free() == 0);
  CHECK(g_counters.purged.load() >= p0 + 32 * kMiB);
  CHECK(wh->purge_due_ms.load() == 0);
  for (void* p : kept) CHECK(static_cast<uint8_t*>(p)[4321] == 0x22);  // live blocks untouched
  // The owner goes on: its lock is free, and the purged slices serve new pages.
  w.run([&] {
    for (void* p : kept) dealloc(p);
    void* p = alloc(64 * 1024);
    CHECK(p != nullptr);
    memset(p, 1, 64 * 1024);
    dealloc(p);
  });
  settle();
}

// A segment made on a chunk that its last user left partly resident holds those slices free
// and resident from the start. They get a purge time like slices just freed: before, they had
// none and stayed resident until the heap happened to free a span of that segment.
// A budget event earlier in the process (g_purge_epoch raised) must not make the new thread's
// first allocation purge every free chunk: before, a new heap started at epoch 0 and did.
TEST_CASE("purge: a segment made on a resident chunk purges the free slices it came with") {
  settle();
  g_purge_epoch.fetch_add(1);  // as an allocation at the budget does (oom_retry)
  {
    Worker a;
    a.run([] {
      // Large blocks fill most of one segment, then all go back: the segment returns its chunk
      // to the arena with those slices resident (the arena keeps them for reuse). Nothing else
      // is allocated on this thread (no vector), so that no page keeps the segment alive.
      void* v[10];
      for (auto& p : v) {
        p = alloc(300 * 1024);
        if (p != nullptr) memset(p, 0x33, 300 * 1024);
      }
      for (void* p : v) dealloc(p);
    });
  }
  Worker b;
  b.run([] {
    void* p = alloc(64);  // a new heap: a new segment, on the most resident free chunk
    REQUIRE(p != nullptr);
    Segment* s = segment_of(p);
    const uint64_t left = s->free_slices & s->dirty_slices & ~uint64_t{1};
    CHECK(left != 0);  // the chunk came back resident: what this test is about
    CHECK(s->purge_at_ms != 0);
    CHECK(t_heap->purge_due_ms.load() != 0);
    CHECK(t_heap->purge_due_ms.load() <= s->purge_at_ms);
    segment_purge(s, s->purge_at_ms, false);  // the owner's maintenance once the time comes
    CHECK((s->free_slices & s->dirty_slices & ~uint64_t{1}) == 0);
    dealloc(p);
  });
  settle();
}

// A phase of the program ends and lets go of most of the heap at once (a compiler's parser
// freeing its trees): the free slices beyond the heap's float (kFreeFloatFloor slices, plus
// 1/kFreeFloatDiv of the slices in its spans) go back at its next maintenance pass, without
// waiting for their purge delay; the float stays for the next phase to reuse. A heap whose free
// slices stay within the float (one that churns) keeps them all until their delay.
TEST_CASE("purge: a heap that let go of most of its memory purges the excess at its next pass") {
  with_heap_no_delay([](Heap* h) {
    auto in_spans = [h] { return slices_in_spans(h); };
    auto pass = [&] {
      h->next_maintenance_ms = 0;
      heap_maintenance(h, false);
    };
    // 16 MiB that stays, and 2 MiB freed: within the float.
    std::vector<void*> live, v;
    for (size_t i = 0; i < 16 * kMiB / (64 * 1024); ++i) {
      live.push_back(alloc(64 * 1024));
      REQUIRE(live.back() != nullptr);
      memset(live.back(), 0x44, 64 * 1024);
    }
    for (size_t i = 0; i < 2 * kMiB / (64 * 1024); ++i) {
      v.push_back(alloc(64 * 1024));
      REQUIRE(v.back() != nullptr);
      memset(v.back(), 0x55, 64 * 1024);
    }
    for (void* p : v) dealloc(p);
    v.clear();
    REQUIRE(h->large_slices == 0);  // 64 KiB blocks live in medium pages: no large slack
    const uint32_t small_float = h->resident_free_slices;
    CHECK(small_float >= 16);  // the 2 MiB freed (less what spare pages kept whole)
    REQUIRE(small_float <= kFreeFloatFloor + in_spans() / kFreeFloatDiv);
    size_t p0 = g_counters.purged.load();
    pass();
    CHECK(h->resident_free_slices == small_float);
    CHECK(g_counters.purged.load() == p0);
    // 96 MiB more, then all of it freed but the first block of each segment (survivors pin
    // every segment, as a program's long-lived objects do): far beyond the float, in more
    // segments than the purge picks by age (kPurgeExcessScan), so its list pass runs too.
    const size_t segments = alloc_then_free_most(live);
    const uint32_t before = h->resident_free_slices;
    const uint32_t allow = kFreeFloatFloor + in_spans() / kFreeFloatDiv;
    REQUIRE(before > allow + 256);
    unsigned with_free = 0;
    for (Segment* s = h->segments; s != nullptr; s = s->next) with_free += s->purge_at_ms != 0;
    REQUIRE(with_free > kPurgeExcessScan);
    p0 = g_counters.purged.load();
    pass();
    CHECK(h->resident_free_slices == allow);  // the float stays resident
    CHECK(g_counters.purged.load() - p0 == static_cast<size_t>(before - allow) * kSliceSize);
    CHECK(h->segment_count == segments);
    CHECK(check_heap_invariants(h) == 0);  // the span index followed the purges
    p0 = g_counters.purged.load();
    pass();  // nothing beyond the float is left
    CHECK(g_counters.purged.load() == p0);
    for (void* p : live) CHECK(static_cast<uint8_t*>(p)[777] != 0);  // live blocks untouched
    for (void* p : live) dealloc(p);
  });
}

// A heap that let go of more than half of its slices (more resident free slices than the rest of
// its segments could hold in spans) runs its maintenance pass, which purges the excess, at its
// next slow-path tick instead of waiting for the pace (a quarter of the purge delay): clang++
// freed 77 MiB of its 120 at once and kept growing by its code and new blocks for the 40-60 ms
// until the pass, which set its peak. A smaller excess waits for the pass (`mstress` refills its
// bursts of frees), and so does a second let-go within the interval (`glibc-simple` frees all
// it built at every round).
TEST_CASE("purge: a heap that let go of more than half of its slices runs its pass early, once an interval") {
  with_heap_no_delay([](Heap* h) {
    const uint64_t far = os::clock_ms() + 3600000;
    h->next_maintenance_ms = far;
    auto tick = [&] { heap_maintenance(h, false); };  // what generic_body does every 64 calls
    // 24 MiB, then the blocks of every third page freed (whole pages, so that their spans
    // come back free inside live segments): beyond the float, but less than half of the heap.
    std::vector<void*> live, v;
    std::map<Page*, unsigned> pages;
    for (size_t i = 0; i < 24 * kMiB / (64 * 1024); ++i) {
      v.push_back(alloc(64 * 1024));
      REQUIRE(v.back() != nullptr);
      memset(v.back(), 0x44, 64 * 1024);
      pages.emplace(page_of(segment_of(v.back()), v.back()), static_cast<unsigned>(pages.size()));
    }
    for (void* p : v) {
      if (pages[page_of(segment_of(p), p)] % 3 == 0) dealloc(p);
      else live.push_back(p);
    }
    v.clear();
    REQUIRE(h->large_slices == 0);
    const uint32_t some = h->resident_free_slices;
    REQUIRE(some > kFreeFloatFloor + slices_in_spans(h) / kFreeFloatDiv);
    REQUIRE(some < slices_in_spans(h));
    size_t p0 = g_counters.purged.load();
    tick();
    CHECK(h->resident_free_slices == some);  // waits for the pass
    CHECK(g_counters.purged.load() == p0);
    // 96 MiB more, all freed but one block per segment: most of the heap let go.
    alloc_then_free_most(live);
    const uint32_t before = h->resident_free_slices;
    const uint32_t allow = kFreeFloatFloor + slices_in_spans(h) / kFreeFloatDiv;
    REQUIRE(before > slices_in_spans(h));
    p0 = g_counters.purged.load();
    tick();
    CHECK(h->resident_free_slices == allow);  // the float stays resident
    CHECK(g_counters.purged.load() - p0 == static_cast<size_t>(before - allow) * kSliceSize);
    CHECK(h->next_maintenance_ms < far);  // the pass ran, and set the next one
    CHECK(check_heap_invariants(h) == 0);
    // The same again within the interval: it waits for the pass.
    h->next_maintenance_ms = far;
    alloc_then_free_most(live);
    const uint32_t again = h->resident_free_slices;
    REQUIRE(again > slices_in_spans(h));
    p0 = g_counters.purged.load();
    tick();
    CHECK(h->resident_free_slices == again);
    CHECK(g_counters.purged.load() == p0);
    for (void* p : live) CHECK(static_cast<uint8_t*>(p)[777] != 0);
    for (void* p : live) dealloc(p);
  });
}

// A thread whose only calls besides the fast paths make, grow and free huge blocks (a program
// that grows its arrays by realloc to megabytes) still gives back the free slices its heap holds
// once their delay has run out (heap_purge_due). Before, only its maintenance, at every 64th
// slow-path allocation, did, and such a thread kept them resident to the end.
TEST_CASE("purge: huge blocks grown and freed give back the free slices whose delay ran out") {
  with_heap_delay(20, [](Heap* h) {
    void* big = alloc(5 * kMiB);
    REQUIRE(big != nullptr);
    memset(big, 0x31, 5 * kMiB);
    std::vector<void*> live;
    // Free slices whose delay runs out before the huge calls, and a pass that is due.
    auto let_slices_wait = [&] {
      alloc_then_free_most(live);
      REQUIRE(h->resident_free_slices > kFreeFloatFloor);
      std::this_thread::sleep_for(std::chrono::milliseconds(40));
      h->next_maintenance_ms = 0;
    };
    let_slices_wait();
    big = realloc_block(big, 9 * kMiB);  // grown (in place or moved)
    REQUIRE(big != nullptr);
    CHECK(h->resident_free_slices == 0);
    CHECK(static_cast<uint8_t*>(big)[5 * kMiB - 1] == 0x31);
    let_slices_wait();
    dealloc(big);
    CHECK(h->resident_free_slices == 0);
    for (void* p : live) dealloc(p);
  });
}

// The excess goes from the segments whose free slices have waited longest (the earliest purge
// times) first: kPurgeExcessScan of them, picked in one read of the segment list, then the rest
// in list order. Here the times run against the list order, so a pick by list order would
// purge the wrong ones.
TEST_CASE("purge: an excess is taken first from the segments whose free slices waited longest") {
  with_heap_no_delay([](Heap* h) {
    std::vector<void*> v, live;
    while (h->segment_count < kPurgeExcessScan + 8) {
      v.push_back(alloc(64 * 1024));
      REQUIRE(v.back() != nullptr);
      memset(v.back(), 0x77, 64 * 1024);
    }
    std::set<Segment*> segs;
    for (void* p : v) {
      if (segs.insert(segment_of(p)).second) live.push_back(p);  // one survivor per segment
      else dealloc(p);
    }
    spare_flush(h);  // (spare pages go back to their segments as free slices)
    // Purge times that grow along the list: the list's last segments waited longest.
    std::vector<Segment*> order;
    for (Segment* s = h->segments; s != nullptr; s = s->next) order.push_back(s);
    const uint64_t t0 = os::clock_ms() + 3600000;
    for (size_t i = 0; i < order.size(); ++i)
      if (order[i]->purge_at_ms != 0) order[i]->purge_at_ms = t0 + (order.size() - i);
    std::vector<Segment*> by_age;
    for (Segment* s : order)
      if (s->purge_at_ms != 0 && (s->free_slices & s->dirty_slices & ~uint64_t{1}) != 0) by_age.push_back(s);
    std::sort(by_age.begin(), by_age.end(), [](Segment* a, Segment* b) { return a->purge_at_ms < b->purge_at_ms; });
    REQUIRE(by_age.size() > kPurgeExcessScan);
    // The excess covers what the oldest kPurgeExcessScan hold: they give all of it, and the
    // float stays in the youngest that the list pass reaches last (here the list's first).
    auto held = [](Segment* s) { return static_cast<unsigned>(popcount64(s->free_slices & s->dirty_slices & ~uint64_t{1})); };
    unsigned oldest_hold = 0;
    for (unsigned i = 0; i < kPurgeExcessScan; ++i) oldest_hold += held(by_age[i]);
    const uint32_t allow = kFreeFloatFloor + slices_in_spans(h) / kFreeFloatDiv + h->large_slices / kUnfitSlackDiv;
    REQUIRE(h->resident_free_slices > allow + oldest_hold);
    heap_purge_excess(h);
    unsigned left = 0;
    for (unsigned i = 0; i < kPurgeExcessScan; ++i) left += held(by_age[i]);
    CHECK(left == 0);
    CHECK(h->resident_free_slices == allow);
    CHECK(check_heap_invariants(h) == 0);
    for (void* p : live) dealloc(p);
  });
}
