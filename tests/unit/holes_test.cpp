// tests/unit/holes_test.cpp: sparse pages give the memory of their free blocks back
// (page_punch), hand it out again when they run out of other blocks, and forget it when they
// empty; a free of a block in such memory is a double free; the heap does it by itself when it
// grows while its pages are mostly free.
#include <sys/mman.h>

#include <algorithm>
#include <csignal>
#include <thread>
#include <vector>

#include "core/options.hpp"
#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {

// Is the OS page at p resident (mincore)?
bool resident(const void* p) {
  unsigned char v = 0;
  auto a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{4095};
  REQUIRE(mincore(reinterpret_cast<void*>(a), 4096, &v) == 0);
  return v & 1;
}

// On a fresh thread: fill one page of blocks of n bytes, then a block on the next page so that
// the first is no longer where allocation happens. Returns the page's blocks in address order.
std::vector<void*> fill_one_page(size_t n, void** extra) {
  std::vector<void*> blocks;
  blocks.push_back(alloc(n));
  Page* page = page_of_ptr(blocks[0]);
  REQUIRE(page->used == 1);
  while (blocks.size() < page->reserved) {
    void* p = alloc(n);
    REQUIRE(page_of_ptr(p) == page);
    blocks.push_back(p);
  }
  *extra = alloc(n);
  REQUIRE(page_of_ptr(*extra) != page);
  std::sort(blocks.begin(), blocks.end());
  return blocks;
}

}  // namespace

TEST_CASE("holes: a sparse page gives the OS pages of its free blocks back and carves them again") {
  Worker w;
  w.run([] {
    const size_t n = 256;  // 16 blocks per OS page
    void* extra = nullptr;
    std::vector<void*> blocks = fill_one_page(n, &extra);
    Page* page = page_of_ptr(blocks[0]);
    REQUIRE(page->reserved == kSliceSize / n);
    for (size_t i = 0; i < blocks.size(); ++i) fill(blocks[i], n, i);
    // Keep the first OS page's 16 blocks and two more in the ninth; free the rest.
    auto kept = [](size_t i) { return i < 16 || i == 8 * 16 + 3 || i == 8 * 16 + 9; };
    for (size_t i = 0; i < blocks.size(); ++i)
      if (!kept(i)) dealloc(blocks[i]);
    REQUIRE(page->used == 18);
    CHECK(page_counts(page).consistent());
    size_t committed = committed_now(), punched = g_counters.punched.load();

    size_t bytes = page_punch(page);
    // OS pages 1..15 but 8: 14 of them; their 14 * 16 blocks are holes now.
    CHECK(bytes == 14 * 4096);
    CHECK(page->holes == 14 * 16);
    CHECK((page_flags(page) & kPageHoles) != 0);
    CHECK(page->fast_magic == 0);  // every free of the page takes the checking path
    CHECK(page_counts(page).consistent());
    CHECK(committed_now() == committed - bytes);
    CHECK(g_counters.punched.load() == punched + bytes);
    for (size_t k = 0; k < 16; ++k) CHECK(resident(static_cast<uint8_t*>(blocks[0]) + k * 4096) == (k == 0 || k == 8));
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (kept(i)) CHECK(check_fill(blocks[i], n, i));
      else if (i / 16 != 8) CHECK(block_is_free_any(segment_of(blocks[i]), page, static_cast<Block*>(blocks[i])));
    }
    CHECK(page_punch(page) == 0);  // nothing more to give back

    // The page ran out of other blocks: allocation goes on in it (its holes carved again)
    // before any new page. Make it the class's page by freeing the other page's block.
    dealloc(extra);
    uint64_t made = t_heap->stats.pages_made[0];
    std::vector<void*> again;
    for (size_t i = 0; i < 14 * 16 + 14; ++i) {
      void* p = alloc(n);
      CHECK(page_of_ptr(p) == page);
      again.push_back(p);
    }
    CHECK(t_heap->stats.pages_made[0] == made);
    CHECK(page->holes == 0);
    CHECK((page_flags(page) & kPageHoles) == 0);
    CHECK(page->used == page->reserved);
    CHECK(committed_now() == committed);
    for (size_t i = 0; i < again.size(); ++i) fill(again[i], n, 1000 + i);
    for (size_t i = 0; i < again.size(); ++i) CHECK(check_fill(again[i], n, 1000 + i));
    for (size_t i = 0; i < blocks.size(); ++i)
      if (kept(i)) CHECK(check_fill(blocks[i], n, i));
    for (void* p : again) dealloc(p);
    for (size_t i = 0; i < blocks.size(); ++i)
      if (kept(i)) dealloc(blocks[i]);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

TEST_CASE("holes: a page that empties with holes goes back whole, counted committed again") {
  Worker w;
  w.run([] {
    const size_t n = 512;
    void* extra = nullptr;
    std::vector<void*> blocks = fill_one_page(n, &extra);
    Page* page = page_of_ptr(blocks[0]);
    Segment* s = segment_of(blocks[0]);
    for (size_t i = 1; i < blocks.size(); ++i) dealloc(blocks[i]);
    size_t committed = committed_now();
    size_t bytes = page_punch(page);
    CHECK(bytes == kSliceSize - 4096);
    CHECK(committed_now() == committed - bytes);
    unsigned idx = static_cast<unsigned>(page - s->pages);
    dealloc(blocks[0]);  // the page empties: its span goes back to the segment
    CHECK((s->free_slices >> idx & 1) != 0);
    CHECK(committed_now() == committed);
    // Its holes are gone with it.
    CHECK(page->holes == 0);
    CHECK((page->punched[0] | page->punched[1]) == 0);
    CHECK((page_flags(page) & kPageHoles) == 0);
    dealloc(extra);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

TEST_CASE("holes: blocks that straddle OS pages, random frees, punch and refill keep every live block") {
  RunsOff classes;  // (5120 bytes: a class page)
  Worker w;
  w.run([] {
    std::mt19937_64 rng(7);
    for (size_t n : {size_t{1792}, size_t{80}, size_t{5120}}) {
      CAPTURE(n);
      void* extra = nullptr;
      std::vector<void*> blocks = fill_one_page(n, &extra);
      Page* page = page_of_ptr(blocks[0]);
      std::vector<bool> live(blocks.size(), true);
      for (size_t i = 0; i < blocks.size(); ++i) fill(blocks[i], n, i);
      for (int round = 0; round < 6; ++round) {
        CAPTURE(round);
        for (size_t i = 1; i < blocks.size(); ++i)  // block 0 stays: the page must not empty
          if (live[i] && rng() % 4 != 0) {
            dealloc(blocks[i]);
            live[i] = false;
          }
        fcache_flush_all(t_heap);  // blocks of 4 KiB and more wait in the class cache: home first
        page_punch(page);
        REQUIRE(page_counts(page).consistent());
        for (size_t i = 0; i < blocks.size(); ++i)
          if (live[i]) REQUIRE(check_fill(blocks[i], n, i));
        // Allocate in the page again (refilling its holes once its free blocks are gone).
        dealloc(extra);
        const size_t live_n = static_cast<size_t>(std::count(live.begin(), live.end(), true));
        // (A page down to its last few free blocks may give way to a new page for a while: those
        // blocks go to `elsewhere`; the page itself must fill up, its holes carved again.)
        std::vector<void*> elsewhere;
        for (size_t k = 0, dead = blocks.size() - live_n; k < 4 * dead && page->used < page->reserved; ++k) {
          void* p = alloc(n);
          if (page_of_ptr(p) != page) {
            elsewhere.push_back(p);
            continue;
          }
          auto at = std::find(blocks.begin(), blocks.end(), p);
          REQUIRE(at != blocks.end());
          size_t j = static_cast<size_t>(at - blocks.begin());
          REQUIRE_FALSE(live[j]);
          live[j] = true;
          fill(p, n, j);
        }
        for (void* p : elsewhere) dealloc(p);
        REQUIRE(page->used == page->reserved);
        REQUIRE(page->holes == 0);
        extra = alloc(n);
        for (size_t i = 0; i < blocks.size(); ++i) {
          REQUIRE(live[i]);
          REQUIRE(check_fill(blocks[i], n, i));
        }
      }
      for (void* p : blocks) dealloc(p);
      dealloc(extra);
    }
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

TEST_CASE("holes: what the header held before does not count as holes, for blocks carved later too") {
  Worker w;
  w.run([] {
    const size_t n = 256;
    std::vector<void*> blocks;
    for (int i = 0; i < 48; ++i) blocks.push_back(alloc(n));
    std::sort(blocks.begin(), blocks.end());
    Page* page = page_of_ptr(blocks[0]);
    for (void* p : blocks) REQUIRE(page_of_ptr(p) == page);
    REQUIRE(page->capacity < page->reserved);  // more to carve later
    // The bitmap's memory as a huge block or an earlier segment may have left it.
    memset(hole_bits(segment_of(blocks[0]), page), 0xff, 512);
    for (size_t i = 16; i < blocks.size(); ++i) dealloc(blocks[i]);
    blocks.resize(16);
    REQUIRE(page_punch(page) > 0);
    CHECK(page_counts(page).consistent());
    // Fill the page: its free blocks, newly carved ones, then its holes; every block once.
    std::set<void*> seen(blocks.begin(), blocks.end());
    std::vector<void*> more;
    while (page->used < page->reserved) {
      void* p = alloc(n);
      if (page_of_ptr(p) != page) {
        dealloc(p);
        break;
      }
      REQUIRE(seen.insert(p).second);
      fill(p, n, more.size());
      more.push_back(p);
    }
    CHECK(page->used == page->reserved);
    for (size_t i = 0; i < more.size(); ++i) CHECK(check_fill(more[i], n, i));
    for (void* p : more) dealloc(p);  // none is taken for a hole
    for (void* p : blocks) dealloc(p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

TEST_CASE("holes: freeing a block whose memory went back is a double free") {
  Worker w;
  void* hole = nullptr;
  std::vector<void*> keep;
  w.run([&] {
    void* extra = nullptr;
    std::vector<void*> blocks = fill_one_page(256, &extra);
    for (size_t i = 16; i < blocks.size(); ++i) dealloc(blocks[i]);
    REQUIRE(page_punch(page_of_ptr(blocks[0])) > 0);
    hole = blocks[100];
    keep.assign(blocks.begin(), blocks.begin() + 16);
    keep.push_back(extra);
  });
  // From another thread, and from the owner thread (a child forked by it).
  ChildResult r = run_child([hole] { nebula_free(hole); });
  CAPTURE(r.err);
  CHECK(WIFSIGNALED(r.status));
  CHECK(r.err.find("double free") != std::string::npos);
  w.run([&] {
    ChildResult o = run_child([hole] { nebula_free(hole); });
    CAPTURE(o.err);
    CHECK(WIFSIGNALED(o.status));
    CHECK(o.err.find("double free") != std::string::npos);
  });
  w.run([&] {
    for (void* p : keep) dealloc(p);
  });
}

TEST_CASE("holes: a heap that grows while its pages are mostly free gives their free memory back") {
  settle();  // no abandoned segments with resident free slices: the second phase takes new memory
  Worker w;
  w.run([] {
    // A phase of small objects, 90% of them freed at random: sparse pages everywhere.
    std::mt19937_64 rng(3);
    std::vector<void*> old;
    for (int i = 0; i < 40000; ++i) old.push_back(alloc(96 + rng() % 160));
    std::shuffle(old.begin(), old.end(), rng);
    for (size_t i = old.size() / 10; i < old.size(); ++i) dealloc(old[i]);
    old.resize(old.size() / 10);
    size_t punched = g_counters.punched.load();
    // (No memory given back for growth before came back: the rule that stops it does not apply.)
    g_punch_feedback.punched.store(0);
    g_punch_feedback.refilled.store(0);
    // The next phase's objects are bigger: new pages, fresh memory, while the old pages hold
    // free blocks of other sizes.
    std::vector<void*> fresh;
    // (The heap looks for sparse pages at most every 8 ms; the first phase's growth just did.)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (int i = 0; i < 6000; ++i) fresh.push_back(alloc(600));
    CHECK(g_counters.punched.load() > punched);
    for (void* p : fresh) dealloc(p);
    for (void* p : old) dealloc(p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

TEST_CASE("holes: malloc_trim gives back the free memory of sparse pages at once") {
  Worker w;
  w.run([] {
    std::mt19937_64 rng(5);
    std::vector<void*> v;
    for (int i = 0; i < 20000; ++i) v.push_back(alloc(200));
    std::shuffle(v.begin(), v.end(), rng);
    for (size_t i = v.size() / 20; i < v.size(); ++i) dealloc(v[i]);
    v.resize(v.size() / 20);
    size_t punched = g_counters.punched.load(), committed = committed_now();
    trim(0);
    CHECK(g_counters.punched.load() > punched);
    CHECK(committed_now() < committed);
    for (void* p : v) dealloc(p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// A heap that grows (punch_want set) while the last punch is less than 8 ms old reads the clock
// once, then skips it for the next 32 calls, keeping what it owes to punch for later.
TEST_CASE("holes: growth within the punch interval reads the clock once per 32 calls") {
  Worker w;
  w.run([] {
    void* p = alloc(64);  // the thread's heap
    REQUIRE(p != nullptr);
    Heap* h = t_heap;
    const uint64_t keep_next = h->next_punch_ms;
    h->next_punch_ms = UINT64_MAX;  // the interval never ends
    h->punch_want = 4096;
    h->punch_skip = 0;
    heap_grew(h);
    CHECK(h->punch_skip == 32);
    for (int i = 0; i < 32; ++i) heap_grew(h);
    CHECK(h->punch_skip == 0);
    CHECK(h->punch_want == 4096);  // still owed
    heap_grew(h);
    CHECK(h->punch_skip == 32);
    // Once the interval is over, maintenance (which reads the clock anyway) drops what is left
    // of the skip, so that the next growth is punched at once, not 32 calls later.
    h->next_punch_ms = 0;
    heap_maintenance(h, false);
    CHECK(h->punch_skip == 0);
    h->next_punch_ms = keep_next;
    h->punch_want = 0;
    h->punch_skip = 0;
    dealloc(p);
  });
}

// The tests of a class's last page: the thread's heap with a page of another class that stays
// (`keep`), and a block `p` of `n` bytes on its class's only page.
struct LastPage {
  const size_t n = 3000;
  const unsigned cls = size_to_class(n);
  void* keep = alloc(64);
  void* p = alloc(n);
  Heap* h = t_heap;
  Page* page = page_of_ptr(p);
  Segment* s = segment_of(p);
  const unsigned idx = static_cast<unsigned>(page - s->pages);
};

// After a page went or gave its memory back: the heap's direct table and lists still hold, and
// the class serves a block of n bytes that keeps what is written to it (returned for the
// caller's checks; the caller frees it).
static void* class_still_serves(Heap* h, size_t n, uint64_t seed) {
  CHECK(direct_table_errors(h) == 0);
  CHECK(check_heap_invariants(h) == 0);
  void* p = alloc(n);
  REQUIRE(p != nullptr);
  fill(p, n, seed);
  CHECK(check_fill(p, n, seed));
  return p;
}

// A class's last page is kept when it empties (page_retire: a loop allocating and freeing one
// block must not make a page each time); found empty by two maintenance passes a purge delay
// apart, it goes back. A page found in use in between starts the wait again, and a page with a
// live block is never let go.
TEST_CASE("holes: a class's last page, empty for a purge delay, goes back") {
  Worker w;
  w.run([] {
    LastPage l;
    REQUIRE(l.h->queues[l.cls].first == l.page);
    REQUIRE(l.page->next == nullptr);
    dealloc(l.p);
    REQUIRE(l.page->used == 0);
    REQUIRE(l.h->queues[l.cls].first == l.page);  // kept empty
    const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
    const uint64_t t0 = os::clock_ms() + 1000;
    heap_punch_sparse(l.h, t0, 0);  // first seen empty
    CHECK(l.h->queues[l.cls].first == l.page);
    heap_punch_sparse(l.h, t0 + delay / 2, 0);
    CHECK(l.h->queues[l.cls].first == l.page);
    // In use at the next pass: the wait starts again.
    l.p = alloc(l.n);
    CHECK(page_of_ptr(l.p) == l.page);
    // (The pass rounds times up to odd milliseconds: steps of at least 10.)
    heap_punch_sparse(l.h, t0 + delay + 10, 0);
    CHECK(l.h->queues[l.cls].first == l.page);  // a live block: kept
    dealloc(l.p);
    heap_punch_sparse(l.h, t0 + delay + 20, 0);  // empty again, seen now
    heap_punch_sparse(l.h, t0 + 2 * delay + 10, 0);
    CHECK(l.h->queues[l.cls].first == l.page);
    heap_punch_sparse(l.h, t0 + 2 * delay + 30, 0);  // a delay later: gone
    CHECK(l.h->queues[l.cls].first == nullptr);
    CHECK(((l.s->free_slices >> l.idx) & 1) == 1);  // its slice is free (purged after the delay)
    l.p = class_still_serves(l.h, l.n, 7);
    CHECK(l.h->queues[l.cls].first == page_of_ptr(l.p));  // from a new page
    dealloc(l.p);
    dealloc(l.keep);
  });
}

// A heap that grows into memory that was not resident (heap_grew) lets its classes' empty last
// pages go at once, without the wait above: their resident slices serve the growing class. A
// last page with a live block stays.
TEST_CASE("holes: a class's last page kept empty goes back at once when the heap grows") {
  Worker w;
  w.run([] {
    LastPage l;
    g_punch_feedback.punched.store(0);  // no growth punch came back: the rule that stops them is off
    g_punch_feedback.refilled.store(0);
    auto grow = [h = l.h] {
      h->next_punch_ms = 0;
      h->punch_skip = 0;
      h->punch_want = 4096;
      heap_grew(h);
    };
    grow();
    CHECK(l.h->queues[l.cls].first == l.page);  // a live block: kept
    dealloc(l.p);
    REQUIRE(l.h->queues[l.cls].first == l.page);  // kept empty (page_retire)
    grow();
    CHECK(l.h->queues[l.cls].first == nullptr);
    CHECK(((l.s->free_slices >> l.idx) & 1) == 1);
    CHECK(l.h->queues[size_to_class(64)].first == page_of_ptr(l.keep));  // the class in use stays
    dealloc(class_still_serves(l.h, l.n, 9));
    dealloc(l.keep);
  });
}

// A page whose live blocks another thread freed, all of them, holds nothing but frees its owner
// never collects unless it allocates from that page again (a program whose sizes moved on). Seen
// so at two passes a purge delay apart with its class quiet, it takes them and gives their
// memory back; a slow-path allocation of the class in between starts the wait again, and a page
// that still has one live block is left to its owner.
TEST_CASE("holes: a page whose blocks other threads all freed gives its memory back at its owner's passes") {
  Worker w;
  for (const bool keep_one : {false, true}) {
    CAPTURE(keep_one);
    const size_t n = keep_one ? 2048 : 1024;
    std::vector<void*> blocks;
    void* extra = nullptr;
    void* kept = nullptr;
    Page* page = nullptr;
    w.run([&] {
      blocks = fill_one_page(n, &extra);  // full: on the heap's full list
      page = page_of_ptr(blocks[0]);
      dealloc(blocks.back());  // the owner's free brings it back to its class's queue
      blocks.pop_back();
      REQUIRE((page_flags(page) & kPageInFull) == 0);
      if (keep_one) {
        kept = blocks.back();
        blocks.pop_back();
      }
    });
    std::thread t([&] {  // no heap: every free goes to the page's thread_free
      for (void* p : blocks) dealloc(p);
    });
    t.join();
    REQUIRE(tf_count(page->thread_free.load()) == page->used - (keep_one ? 1 : 0));
    w.run([&] {
      Heap* h = t_heap;
      const unsigned cls = page->size_class;
      auto queued = [&] {
        for (Page* q = h->queues[cls].first; q != nullptr; q = q->next)
          if (q == page) return true;
        return false;
      };
      const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
      const uint64_t t0 = os::clock_ms() + 1000;
      const uint32_t pending = tf_count(page->thread_free.load());
      heap_punch_sparse(h, t0, 0);  // first seen so
      heap_punch_sparse(h, t0 + delay / 2, 0);
      h->class_ticks[cls]++;        // the class allocated on its slow path: wait again
      heap_punch_sparse(h, t0 + delay + 10, 0);
      CHECK(tf_count(page->thread_free.load()) == pending);
      CHECK(page->holes == 0);
      heap_punch_sparse(h, t0 + 2 * delay + 20, 0);  // quiet for a delay
      CHECK(queued());
      if (keep_one) {
        CHECK(tf_count(page->thread_free.load()) == pending);  // left to its owner
        CHECK(page->holes == 0);
      } else {
        CHECK(tf_count(page->thread_free.load()) == 0);
        CHECK(page->used == 0);
        CHECK(page->holes == page->capacity);  // every block's memory went back
        CHECK((page_flags(page) & kPageHoles) != 0);
        const uint8_t* start = page_start(segment_of(page), page);
        bool any = false;
        for (size_t off = 0; off < size_t{page->capacity} * page->block_size; off += 4096) any |= resident(start + off);
        CHECK(!any);
      }
      CHECK(h->queues[cls].first == page_of_ptr(extra));  // the page allocation happens in stays
      dealloc(class_still_serves(h, n, 5));
      if (kept != nullptr) dealloc(kept);
      dealloc(extra);
    });
  }
}

// A page punched because the heap grew and then emptied returns its punched memory as free
// slices, which the next span of a growing heap takes (page faults again): its bytes count as
// come back in the feedback that stops growth punches, as holes carved again do. A page punched
// by maintenance (not for growth) leaves the feedback alone.
TEST_CASE("holes: memory given back for growth counts as come back when its page dies") {
  Worker w;
  w.run([] {
    for (bool growth : {true, false}) {
      CAPTURE(growth);
      void* extra = nullptr;
      std::vector<void*> blocks = fill_one_page(256, &extra);
      Page* page = page_of_ptr(blocks[0]);
      for (size_t i = 2; i < blocks.size(); ++i) dealloc(blocks[i]);  // 2 of 256 live: sparse
      g_punch_feedback.punched.store(0);
      g_punch_feedback.refilled.store(0);
      size_t got;
      if (growth) {
        got = heap_punch_sparse(t_heap, os::clock_ms(), 4096);
        CHECK(page->punched_for_growth == 1);
        CHECK(g_punch_feedback.punched.load() == got);
      } else {
        got = page_punch(page);
        CHECK(page->punched_for_growth == 0);
      }
      REQUIRE(got >= 60 * 1024);  // every OS page but the first holds free blocks only
      CHECK(g_punch_feedback.refilled.load() == 0);
      dealloc(blocks[0]);
      dealloc(blocks[1]);  // the page empties and goes (it has holes: never a spare)
      CHECK((page_flags(page) & kPageNotInUse) != 0);
      CHECK(g_punch_feedback.refilled.load() == (growth ? got : 0));
      dealloc(extra);
      CHECK(check_heap_invariants(t_heap) == 0);
    }
    g_punch_feedback.punched.store(0);
    g_punch_feedback.refilled.store(0);
  });
}

// The periodic passes over sparse pages (maintenance, growth) read at most kPunchScanSegments
// segments each, from where the last one stopped, so that a heap of gigabytes is not read whole
// every few milliseconds; every segment is still reached, within ceil(segments / limit) passes.
// A segment that leaves the heap moves the cursor on.
TEST_CASE("holes: the periodic punch pass reads a big heap in turns and reaches all of it") {
  Worker w;
  w.run([] {
    const size_t n = 1024;  // 64 blocks per 64 KiB page, 4 per OS page
    Heap* h = nullptr;
    std::vector<void*> blocks;
    const uint32_t want_segments = kPunchScanSegments + kPunchScanSegments / 4;
    while (h == nullptr || h->segment_count < want_segments) {
      blocks.push_back(alloc(n));
      REQUIRE(blocks.back() != nullptr);
      h = t_heap;
    }
    void* fresh = alloc(n);  // the class's current page stays out of it (queue first)
    // One live block in each page: every page but the class's first is sparse.
    std::vector<void*> kept;
    for (void* p : blocks) {
      Page* page = page_of_ptr(p);
      if (block_index(segment_of(p), page, p) == 0) kept.push_back(p);
      else dealloc(p);
    }
    const Page* first = h->queues[size_to_class(n)].first;
    // The segments holding sparse pages of ours (all = those the passes should reach).
    auto segments_with = [&](bool all) {
      std::vector<Segment*> seen;
      for (void* p : kept) {
        Page* page = page_of_ptr(p);
        if (page != first && (all || page->sparse_since != 0)) seen.push_back(segment_of(p));
      }
      std::sort(seen.begin(), seen.end());
      seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
      return seen.size();
    };
    auto segments_seen = [&] { return segments_with(false); };
    const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
    const uint64_t t0 = os::clock_ms() + 1000;
    const uint32_t count = h->segment_count;
    REQUIRE(count > kPunchScanSegments);
    heap_punch_sparse(h, t0, 0);  // first seen sparse
    const size_t after_one = segments_seen();
    CHECK(after_one > 0);
    CHECK(after_one <= kPunchScanSegments);
    CHECK(after_one < count);  // the rest waits for the next pass
    Segment* cursor = h->punch_next;
    REQUIRE(cursor != nullptr);
    CHECK(heap_punch_sparse(h, t0 + 10, 0) == 0);  // (sparse for 10 ms: none given back)
    CHECK(segments_seen() == segments_with(true));   // the second pass reached the rest
    CHECK(segments_with(true) > kPunchScanSegments);
    // Four purge delays later, passes give the free blocks' memory back, all within
    // ceil(count / limit) + 1 passes.
    size_t got = 0;
    for (uint32_t i = 0; i <= count / kPunchScanSegments + 1; ++i)
      got += heap_punch_sparse(h, t0 + 4 * delay + 20 + 10 * i, 0);
    size_t punched_pages = 0;
    for (void* p : kept) punched_pages += page_of_ptr(p) != first && page_of_ptr(p)->holes != 0;
    size_t sparse_pages = 0;
    for (void* p : kept) sparse_pages += page_of_ptr(p) != first;
    CHECK(punched_pages == sparse_pages);
    CHECK(got >= punched_pages * 60 * 1024);  // all but the first OS page of each
    // A segment that leaves the heap (here: its pages all emptied) moves the cursor on.
    cursor = h->punch_next;
    REQUIRE(cursor != nullptr);
    Segment* after = cursor->next;
    for (auto it = kept.begin(); it != kept.end();) {
      if (segment_of(*it) == cursor) {
        dealloc(*it);
        it = kept.erase(it);
      } else {
        ++it;
      }
    }
    bool in_list = false;
    for (Segment* s = h->segments; s != nullptr; s = s->next) in_list |= s == cursor;
    CHECK(!in_list);  // its last page gone, the segment went back to the arena
    CHECK(h->punch_next == after);
    CHECK(check_heap_invariants(h) == 0);
    for (void* p : kept) dealloc(p);
    dealloc(fresh);
    CHECK(check_heap_invariants(h) == 0);
  });
}
