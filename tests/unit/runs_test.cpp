// tests/unit/runs_test.cpp: medium runs (core/runs.cpp), the pages that serve plain requests of
// (kRunsMin, kRunsMax] with runs of 512-byte units that every size in the range shares.
#include <cstring>
#include <initializer_list>
#include <thread>
#include <vector>

#include "core/budget.hpp"
#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {

size_t runs_pages(const Heap* h) {
  size_t n = 0;
  for (const Page* p = h->runs.first; p != nullptr; p = p->next) ++n;
  return n;
}

// The heap's bookkeeping holds before and after the blocks are freed.
void free_checked_all(std::initializer_list<void*> blocks) {
  CHECK(check_heap_invariants(t_heap) == 0);
  for (void* p : blocks) dealloc(p);
  CHECK(check_heap_invariants(t_heap) == 0);
}

}  // namespace

// The units a block of one size leaves serve a block of another size, merged with the free units
// beside them: the range is one pool, not a page queue per class.
TEST_CASE("runs: blocks take whole units, and freed neighbours merge to serve another size") {
  RunsOn runs;
  Worker w;
  w.run([] {
    const uint64_t live0 = stats().live_bytes;
    auto* a = static_cast<uint8_t*>(alloc(10000));  // 20 units
    auto* b = static_cast<uint8_t*>(alloc(10000));
    auto* c = static_cast<uint8_t*>(alloc(10000));
    REQUIRE(page_of_ptr(a)->kind == PageKind::kRuns);
    CHECK(stats().live_bytes - live0 == 3 * 10240);  // (the statistics count a runs page's units)
    CHECK(usable_size(a) == 10240);
    CHECK(b == a + 10240);  // carved in order from the page's one free run
    CHECK(c == b + 10240);
    CHECK(page_of_ptr(a)->used == 3);
    CHECK(page_of_ptr(a)->runs_units == 60);
    dealloc(a);
    dealloc(b);
    // 40 free units at a: a request of 20,000 bytes (40 units) takes exactly them, where a page
    // queue per class would have made a page for its class.
    auto* d = static_cast<uint8_t*>(alloc(20000));
    CHECK(d == a);
    CHECK(usable_size(d) == 20480);
    // The first unit of a run is where it is freed from: a pointer inside one is refused by free
    // (bad_input_test.cpp), and usable_size counts from p to the block's end.
    CHECK(usable_size(d + 512) == 20480 - 512);
    free_checked_all({c, d});
  });
}

TEST_CASE("runs: realloc grows a block into the free units after it and gives a shrunk block's tail back") {
  RunsOn runs;
  Worker w;
  w.run([] {
    auto* p = static_cast<uint8_t*>(alloc(6000));  // 12 units, the rest of the page free after it
    REQUIRE(page_of_ptr(p)->kind == PageKind::kRuns);
    memset(p, 0x5a, 6000);
    CHECK(realloc_block(p, 9000) == p);
    CHECK(usable_size(p) == 9216);
    CHECK(filled(p, 6000, 0x5a));
    auto* q = static_cast<uint8_t*>(alloc(6000));  // right after it
    CHECK(q == p + 9216);
    // No room after it now: it moves, to a block with room for a class's worth of growth.
    memset(p, 0x6b, 9000);
    auto* m = static_cast<uint8_t*>(realloc_block(p, 12000));
    CHECK(m != p);
    CHECK(usable_size(m) == kClassSize[size_to_class(12000)]);
    CHECK(filled(m, 9000, 0x6b));
    // A shrink below half keeps the block and frees its tail.
    const uint32_t cap = page_of_ptr(m)->runs_units;
    CHECK(realloc_block(m, 5000) == m);
    CHECK(usable_size(m) == 5120);
    CHECK(page_of_ptr(m)->runs_units == cap - (kClassSize[size_to_class(12000)] - 5120) / kRunsUnit);
    CHECK(filled(m, 5000, 0x6b));
    free_checked_all({q, m});
  });
}

// Other threads push their frees on the page; the owner merges them into its bins when its bins
// have no room for a request, or at maintenance.
TEST_CASE("runs: other threads' frees come back to the owner") {
  RunsOn runs;
  Worker w;
  std::vector<void*> blocks;
  w.run([&] {  // 12 blocks of 10-17 units: 162 of a page's 256
    for (int i = 0; i < 12; ++i) blocks.push_back(alloc(5000 + static_cast<size_t>(i) * 300));
  });
  Page* page = page_of_ptr(blocks[0]);
  REQUIRE(page->kind == PageKind::kRuns);
  for (void* p : blocks)
    REQUIRE(page_of_ptr(p) == page);
  const uint32_t used = page->used;
  for (size_t i = 0; i < blocks.size(); i += 2) dealloc_from_bare_thread(blocks[i]);
  CHECK(page->used == used);  // not yet collected
  CHECK(tf_count(page->thread_free.load()) == 6);
  w.run([&] {
    heap_collect(t_heap, false);
    CHECK(page->used == used - 6);
    CHECK(tf_count(page->thread_free.load()) == 0);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (size_t i = 1; i < blocks.size(); i += 2) dealloc(blocks[i]);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// The owner's free into a page takes the page's waiting frees by other threads with it: their
// units are in the bins again at once, merged with the owner's (before, they waited for
// maintenance, and the heap's requests took other runs and new pages meanwhile).
TEST_CASE("runs: the owner's free into a page takes the other threads' frees waiting there") {
  RunsOn runs;
  Worker w;
  std::vector<void*> blocks;
  Page* page = nullptr;
  uint32_t used = 0;
  uint16_t units = 0;
  w.run([&] {
    for (int i = 0; i < 12; ++i) blocks.push_back(alloc(5000));  // 10 units each
    page = page_of_ptr(blocks[0]);
    REQUIRE(page->kind == PageKind::kRuns);
    REQUIRE(page_of_ptr(blocks[11]) == page);
    used = page->used;
    units = page->runs_units;
  });
  // Blocks 0-4 freed by another thread: they wait on the page.
  for (size_t i = 0; i < 5; ++i) dealloc_from_bare_thread(blocks[i]);
  CHECK(tf_count(page->thread_free.load()) == 5);
  w.run([&] {
    dealloc(blocks[5]);  // the owner's free next to them
    CHECK(tf_count(page->thread_free.load()) == 0);
    CHECK(page->used == used - 6);
    CHECK(page->runs_units == units - 60);
    CHECK(check_heap_invariants(t_heap) == 0);
    // The six blocks' 60 units are one free run in its bin: the best fit for a block of 60 units
    // (the page's other free run is its long tail).
    void* p = alloc(60 * kRunsUnit);
    CHECK(p == blocks[0]);
    dealloc(p);
    for (size_t i = 6; i < blocks.size(); ++i) dealloc(blocks[i]);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// A block taken from a run is not written, so it holds whatever the memory held: a freed class
// block's words (g_free_key in the second, and ~g_free_key in the third if it went through a
// foreign cache). Its first free must not take them for another thread's free. It did, with the
// same mark for both (the unit tests in a random order, seed 5: "double free" at a fresh block).
TEST_CASE("runs: a block made over memory that holds a foreign cache's marks frees normally") {
  RunsOn runs;
  Worker w;
  w.run([] {
    auto* a = static_cast<uintptr_t*>(alloc(9000));
    auto* b = static_cast<uintptr_t*>(alloc(9000));  // keeps a's run apart from the page's tail
    dealloc(a);
    a[1] = g_free_key;  // what a foreign-cached class block leaves behind
    a[2] = ~g_free_key;
    auto* c = static_cast<uintptr_t*>(alloc(9000));  // the bin of a's length: a's run
    REQUIRE(c == a);
    CHECK(c[1] == g_free_key);  // (not written: the words are still there)
    dealloc(c);  // aborted as a double free
    dealloc(b);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// A page whose blocks are all freed goes back to its segment, but the heap's last runs page stays
// (a loop that allocates and frees one block would otherwise make a page each time) until
// maintenance finds it empty for a purge delay or the heap is trimmed.
TEST_CASE("runs: emptied pages go back, the heap's last one once the range is quiet") {
  RunsOn runs;
  Worker w;
  w.run([] {
    std::vector<void*> v;
    for (unsigned i = 0; i < 3 * (kRunsUnits / 40); ++i) v.push_back(alloc(20000));  // 40 units each: three pages
    CHECK(runs_pages(t_heap) == 3);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* p : v) dealloc(p);
    CHECK(runs_pages(t_heap) == 1);
    CHECK(t_heap->runs.first->used == 0);
    CHECK(check_heap_invariants(t_heap) == 0);
    heap_collect(t_heap, true);
    CHECK(runs_pages(t_heap) == 0);
    CHECK(runs_bins(t_heap)->mask == 0);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// A thread that exits leaves its runs pages in its abandoned segments; blocks freed meanwhile go
// on the pages, and the heap that adopts a segment takes its pages, their free runs and those
// frees.
TEST_CASE("runs: the next heap adopts an exited thread's runs pages with the frees made meanwhile") {
  RunsOn runs;
  settle();
  std::vector<void*> blocks;
  {
    Worker w;
    w.run([&] {
      for (int i = 0; i < 30; ++i) {
        void* p = alloc(5000 + static_cast<size_t>(i) * 900);
        memset(p, i, 5000);
        blocks.push_back(p);
      }
    });
  }  // the worker exits: its segments are abandoned
  Page* page = page_of_ptr(blocks[0]);
  REQUIRE(segment_of(page)->owner_heap.load() == nullptr);
  for (size_t i = 0; i < blocks.size(); i += 2) dealloc(blocks[i]);  // onto the abandoned pages
  Worker w2;
  w2.run([&] {
    ensure_heap();
    heaps_collect_abandoned(false);  // adopts them
    CHECK(segment_of(page)->owner_heap.load() == t_heap);
    CHECK(runs_pages(t_heap) >= 1);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (size_t i = 1; i < blocks.size(); i += 2) {
      CHECK(filled(blocks[i], 5000, static_cast<uint8_t>(i)));
      dealloc(blocks[i]);
    }
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// Random sizes of the range, random frees, reallocs and callocs: every live block keeps its bytes
// and the bookkeeping (bitmap, lengths, bins) stays that of the blocks.
TEST_CASE("runs: random blocks of the range keep their contents and the bookkeeping holds") {
  RunsOn runs;
  Worker w;
  w.run([] {
    uint64_t x = 0x9e3779b97f4a7c15u;
    auto rnd = [&] {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      return x;
    };
    struct Live {
      uint8_t* p;
      size_t n;
      uint8_t v;
    };
    std::vector<Live> live;
    int bad = 0;
    for (int step = 0; step < 20000; ++step) {
      const uint64_t r = rnd();
      if (live.size() < 300 && (r % 3 != 0 || live.empty())) {
        const size_t n = kRunsMin + 1 + rnd() % (kRunsMax - kRunsMin);
        const bool zero = r % 7 == 0;
        auto* p = static_cast<uint8_t*>(zero ? alloc_zero(n) : alloc(n));
        REQUIRE(p != nullptr);
        if (zero && !filled(p, n, 0)) ++bad;
        const auto v = static_cast<uint8_t>(r >> 8);
        memset(p, v, n);
        live.push_back({p, n, v});
      } else {
        const size_t k = rnd() % live.size();
        Live& l = live[k];
        if (!filled(l.p, l.n, l.v)) ++bad;
        if (r % 5 == 0) {
          const size_t n = kRunsMin + 1 + rnd() % (kRunsMax - kRunsMin);
          auto* q = static_cast<uint8_t*>(realloc_block(l.p, n));
          REQUIRE(q != nullptr);
          if (!filled(q, std::min(n, l.n), l.v)) ++bad;
          memset(q, l.v, n);
          l.p = q;
          l.n = n;
        } else {
          dealloc(l.p);
          live[k] = live.back();
          live.pop_back();
        }
      }
      if (step % 2000 == 0) CHECK(check_heap_invariants(t_heap) == 0);
    }
    CHECK(bad == 0);
    for (const Live& l : live) dealloc(l.p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

namespace {

// A page full of blocks of 12,000 bytes (24 units each: kSparseBlocks of them, kSparseTail units
// of the page after them), all 0x77, and those between the first and the last freed: a sparse
// page with one long free run. Returns them all (the first and the last live).
constexpr size_t kSparseBlocks = kRunsUnits / 24;
constexpr size_t kSparseTail = kRunsUnits - kSparseBlocks * 24;
std::vector<void*> sparse_page() {
  std::vector<void*> v;
  for (size_t i = 0; i < kSparseBlocks; ++i) {
    v.push_back(alloc(12000));
    memset(v.back(), 0x77, 12000);
  }
  Page* page = page_of_ptr(v[0]);
  for (void* p : v)
    REQUIRE(page_of_ptr(p) == page);
  for (size_t i = 1; i + 1 < v.size(); ++i) dealloc(v[i]);
  return v;
}

}  // namespace

// A sparse runs page gives the memory of its free runs back (every whole OS page in them),
// counted out of the committed bytes, and takes it back as blocks are made there again.
TEST_CASE("runs: a sparse page's free runs go back to the OS and come back as blocks are made") {
  RunsOn runs;
  Worker w;
  w.run([] {
    const std::vector<void*> v = sparse_page();
    Page* page = page_of_ptr(v[0]);
    const uint64_t committed = stats().committed_bytes;
    const size_t got = runs_punch(page);
    // The run of the blocks freed, less the OS pages its ends share with the blocks kept, and the
    // page's units after the last block.
    const size_t ps = os::page_size(), from = 24 * kRunsUnit, to = (kSparseBlocks - 1) * 24 * kRunsUnit;
    CHECK(got == ((to & ~(ps - 1)) - align_up(from, ps)) + kSparseTail * kRunsUnit);
    CHECK((page->punched[0] | page->punched[1]) != 0);
    CHECK(stats().committed_bytes == committed - got);
    CHECK(runs_punch(page) == 0);  // nothing more to give back
    // Blocks made over that memory find it zero (given back), and its OS pages under a live block
    // are no longer marked given back (so they count as committed again, and as such when the
    // page is freed).
    std::vector<void*> again;
    for (size_t i = 0; i + 2 < kSparseBlocks; ++i) again.push_back(alloc(12000));
    size_t zero_blocks = 0, marked = 0;
    uint8_t* const start = page_start(segment_of(page), page);
    for (void* p : again) {
      if (page_of_ptr(p) != page) continue;
      // Inside the run the punch gave back (the blocks freed, all 0x77 before); the page's last
      // units, never written, do not count.
      const size_t at = static_cast<size_t>(static_cast<uint8_t*>(p) + 4096 * 2 - start);
      if (at >= 24 * kRunsUnit + 4096 && at < (kSparseBlocks - 1) * 24 * kRunsUnit &&
          static_cast<uint8_t*>(p)[4096 * 2] == 0)
        ++zero_blocks;
      for (size_t off = 0; off < 12000; off += 4096) {
        const size_t k = static_cast<size_t>(static_cast<uint8_t*>(p) + off - start) / 4096;
        marked += (page->punched[k / 64] >> (k % 64)) & 1;
      }
      memset(p, 0x33, 12000);
    }
    CHECK(zero_blocks > 0);
    CHECK(marked == 0);
    CHECK(filled(v.front(), 12000, 0x77));
    CHECK(filled(v.back(), 12000, 0x77));
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* p : again) dealloc(p);
    dealloc(v.front());
    dealloc(v.back());
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

// Under a budget, the OS pages a punch gave back count again only where the budget takes them:
// a block is not made over them past it, and a page that dies with them at the budget goes back
// whole instead of counting them again (budget_race with runs on went 0.9 MiB over, stop 47).
TEST_CASE("runs: punched memory never counts again past the budget") {
  RunsOn runs;
  Worker w;
  w.run([] {
    const std::vector<void*> v = sparse_page();
    Page* page = page_of_ptr(v[0]);
    REQUIRE(runs_pages(t_heap) == 1);
    REQUIRE(runs_punch(page) > 0);  // every free run of the page: nothing free is resident
    nebula_mem_collect();  // nor anywhere else: free slices (of segments adopted too) purged
    REQUIRE(page_of_ptr(v[0]) == page);
    const uint64_t limit = g_counters.committed.load();
    REQUIRE(nebula_mem_set_budget(limit) == 0);
    g_counters.committed_peak.store(limit);  // (the collection below purges what went over)
    // Every run of the page needs punched OS pages again, and a new page needs new slices.
    const CallResult r = call_errno([] { return nebula_malloc(12000); });
    CHECK(r.p == nullptr);
    CHECK(r.err == ENOMEM);
    if (r.p != nullptr) dealloc(r.p);
    CHECK(g_counters.committed.load() <= limit);
    // The page empties and is freed with its punched OS pages while the budget is full.
    dealloc(v.front());
    dealloc(v.back());
    nebula_mem_collect();
    CHECK(runs_pages(t_heap) == 0);
    CHECK(g_counters.committed_peak.load() <= limit);
    CHECK(check_heap_invariants(t_heap) == 0);
    REQUIRE(nebula_mem_set_budget(0) == 0);
    budget_poll_if_needed();
  });
}
