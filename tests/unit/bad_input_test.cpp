// tests/unit/bad_input_test.cpp: pointers that were never handed out stop the process with a
// one-line message naming the pointer. Each case runs in a forked child whose stderr is read
// back through a pipe.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {

int g_global_word = 1;

std::string hex(const void* p) {
  char b[32];
  snprintf(b, sizeof b, "0x%lx", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(p)));
  return b;
}

void expect_abort(const ChildResult& r, const void* p, const char* op, const char* reason) {
  CAPTURE(r.err);
  CHECK(WIFSIGNALED(r.status));
  if (WIFSIGNALED(r.status)) CHECK(WTERMSIG(r.status) == SIGABRT);
  std::string prefix = std::string("nebula-memory: ") + op + "(0x";
  CHECK(r.err.rfind(prefix, 0) == 0);  // the message is the first thing written
  CHECK(r.err.find(std::string(op) + "(" + hex(p) + "): ") != std::string::npos);
  CHECK(r.err.find(reason) != std::string::npos);
  // One line, then (with libunwind) backtrace lines that start with two spaces.
  size_t nl = r.err.find('\n');
  REQUIRE(nl != std::string::npos);
  CHECK((nl + 1 == r.err.size() || r.err.compare(nl + 1, 3, "  #") == 0));
}

}  // namespace

TEST_CASE("bad input: free of a stack address aborts with a message naming the pointer") {
  settle();
  int on_stack = 5;
  void* p = &on_stack;
  ChildResult r = run_child([p] { nebula_free(p); });
  expect_abort(r, p, "free", "stack");
}

TEST_CASE("bad input: free of a global aborts") {
  void* p = &g_global_word;
  ChildResult r = run_child([p] { nebula_free(p); });
  expect_abort(r, p, "free", "global");
}

TEST_CASE("bad input: free of an interior pointer of a huge block aborts") {
  settle();
  auto* h = static_cast<uint8_t*>(nebula_malloc(size_t{10} << 20));
  REQUIRE(h != nullptr);
  void* p1 = h + 4096;                  // in the segment's first chunk
  void* p2 = h + (size_t{6} << 20);     // in an interior chunk
  void* p3 = h + (size_t{1} << 20);     // in the first chunk, a slice whose descriptor a header
                                        // of clean memory leaves 0 (huge_header)
  ChildResult r1 = run_child([p1] { nebula_free(p1); });
  expect_abort(r1, p1, "free", "middle of a huge block");
  ChildResult r2 = run_child([p2] { nebula_free(p2); });
  expect_abort(r2, p2, "free", "middle of a huge block");
  ChildResult r3 = run_child([p3] { nebula_free(p3); });
  expect_abort(r3, p3, "free", "middle of a huge block");
  ChildResult r4 = run_child([p3] { (void)nebula_realloc(p3, 100); });
  expect_abort(r4, p3, "realloc", "middle of a huge block");
  nebula_free(h);
}

TEST_CASE("bad input: free into a free slice of a live segment aborts") {
  settle();
  void* keep = nebula_malloc(100);
  REQUIRE(keep != nullptr);
  Segment* s = segment_of(keep);
  uint64_t free_slices = s->free_slices;
  REQUIRE(free_slices != 0);
  unsigned idx = ctz64(free_slices);
  void* p = reinterpret_cast<char*>(s) + (size_t{idx} << kSliceShift) + 64;
  ChildResult r = run_child([p] { nebula_free(p); });
  expect_abort(r, p, "free", "not a live block");
  // The segment header (slice 0) is not a block either.
  void* hdr = reinterpret_cast<char*>(s) + 256;
  ChildResult r2 = run_child([hdr] { nebula_free(hdr); });
  expect_abort(r2, hdr, "free", "not a live block");
  nebula_free(keep);
}

TEST_CASE("bad input: free of a freed huge block (unmapped from the map) aborts") {
  settle();
  void* h = nebula_malloc(size_t{400} << 20);  // its own mapping: released on free
  REQUIRE(h != nullptr);
  nebula_free(h);
  ChildResult r = run_child([h] { nebula_free(h); });
  expect_abort(r, h, "free", "unmapped");
}

TEST_CASE("bad input: free of a block whose segment was already released aborts") {
  settle();
  void* p = nebula_malloc(100);
  REQUIRE(p != nullptr);
  nebula_free(p);
  settle();  // the page and its segment go back to the arena
  REQUIRE_FALSE(is_segment_start_chunk(p));
  ChildResult r = run_child([p] { nebula_free(p); });
  expect_abort(r, p, "free", "not a live block");
}

TEST_CASE("bad input: usable_size and realloc of a stack address abort too") {
  int on_stack = 0;
  void* p = &on_stack;
  ChildResult r1 = run_child([p] { (void)nebula_usable_size(p); });
  expect_abort(r1, p, "malloc_usable_size", "stack");
  ChildResult r2 = run_child([p] { (void)nebula_realloc(p, 100); });
  CHECK(WIFSIGNALED(r2.status));
  CHECK(r2.err.rfind("nebula-memory: ", 0) == 0);
  CHECK(r2.err.find(hex(p)) != std::string::npos);
}

TEST_CASE("bad input: a child that frees valid memory exits normally (control)") {
  void* p = nebula_malloc(64);
  ChildResult r = run_child([p] { nebula_free(p); });
  CHECK(WIFEXITED(r.status));
  CHECK(r.err.empty());
  nebula_free(p);
}

TEST_CASE("bad input (default mode): double free of a small block aborts, by the owner and by another thread") {
  settle();
  for (size_t size : {size_t{16}, size_t{100}, size_t{5000}, size_t{60000}}) {
    CAPTURE(size);
    void* p = nebula_malloc(size);
    REQUIRE(p != nullptr);
    ChildResult r = run_child([p] {
      nebula_free(p);
      nebula_free(p);
    });
    expect_abort(r, p, "free", "double free");
    // Freed by another thread, then again by that thread (it sits on the page's thread_free).
    ChildResult r2 = run_child([p] {
      std::thread t([p] {
        nebula_free(p);
        nebula_free(p);
      });
      t.join();
    });
    expect_abort(r2, p, "free", "double free");
    nebula_free(p);
  }
}

// A block freed by a thread with a heap, other than its owner, waits in that thread's foreign
// cache; a second free of it is caught wherever it comes from: the caching thread, the owner
// (its fast path sees the free key, its lists do not hold the block, the block's mark does) or a
// third thread.
TEST_CASE("bad input (default mode): double free of a block in another thread's foreign cache aborts") {
  settle();
  ensure_heap();
  for (size_t size : {size_t{48}, size_t{100}, size_t{5000}, size_t{60000}}) {
    CAPTURE(size);
    void* p = nebula_malloc(size);  // owned by the main thread
    REQUIRE(p != nullptr);
    for (int second : {0, 1, 2}) {  // who frees it again: the caching thread, the owner, a third thread
      CAPTURE(second);
      ChildResult r = run_child([p, second] {
        std::atomic<int> step{0};
        std::thread t([&] {
          nebula_free(nebula_malloc(size_t{64}));  // this thread has a heap
          t_heap->fc_on = fcache_ready(t_heap);  // and caches (as after many remote frees)
          nebula_free(p);                         // cached here
          if (second == 0) nebula_free(p);
          step = 1;
          while (step.load() != 2) std::this_thread::yield();  // keep the cache alive
        });
        while (step.load() != 1) std::this_thread::yield();
        if (second == 1) {
          nebula_free(p);
        } else if (second == 2) {
          std::thread u([p] { nebula_free(p); });
          u.join();
        }
        step = 2;
        t.join();
      });
      expect_abort(r, p, "free", "double free");
    }
    nebula_free(p);
  }
}

// Every block of a spare page (an emptied page kept whole, page_retire) is free: a second free
// or a realloc of one aborts even when a write after the first free changed the word the free key lives in
// (the page's flag says it, without the block's help).
TEST_CASE("bad input (default mode): a second free or a realloc of a block of a spare page aborts") {
  settle();
  ensure_heap();
  ChildResult r;
  void* victim = nullptr;
  const size_t per_page = kSliceSize / 64;
  std::vector<void*> v;
  for (size_t i = 0; i < 3 * per_page; ++i) v.push_back(nebula_malloc(64));
  Page* p = page_of_ptr(v[0]);
  std::vector<void*> first;
  for (void* b : v)
    if (page_of_ptr(b) == p) first.push_back(b);
  REQUIRE(first.size() == per_page);
  victim = first[7];
  r = run_child([&] {
    for (void* b : first) nebula_free(b);
    if (t_heap->spare != p) _exit(3);  // (the setup did not make a spare)
    memset(victim, 0x5A, 64);          // a write after free
    nebula_free(victim);
  });
  expect_abort(r, victim, "free", "double free");
  r = run_child([&] {
    for (void* b : first) nebula_free(b);
    if (t_heap->spare != p) _exit(3);
    memset(victim, 0x5A, 64);
    (void)!nebula_realloc(victim, 48);  // fits: a block taken for live would be handed back
  });
  expect_abort(r, victim, "realloc", "freed already");
  for (void* b : v) nebula_free(b);
}

// The owner's free of a block of 4-8 KiB into a full page waits in the heap's class cache
// (class caches): the block's page still counts it as handed out, so a second free or a
// realloc of it is caught by the cache's mark, even on a page whose every block is out (where
// realloc otherwise trusts the page's count without reading the block).
// A small class (5000 bytes, 12 blocks to a page) and a medium one (20,000 bytes, 3 to a page).
TEST_CASE("bad input (default mode): a second free or a realloc of a block in its owner's class cache aborts") {
  RunsOff classes;
  settle();
  ensure_heap();
  for (size_t n : {size_t{5000}, size_t{20000}}) {
    CAPTURE(n);
    const unsigned cls = size_to_class(n);
    REQUIRE(class_caches_frees(cls));
    std::vector<void*> v;
    v.push_back(nebula_malloc(n));
    const size_t per_page = page_of_ptr(v[0])->reserved;
    while (v.size() < 3 * per_page) v.push_back(nebula_malloc(n));
    void* victim = v[per_page];  // the first block of the second page
    Page* p = page_of_ptr(victim);
    REQUIRE(page_flags(p) == kPageInFull);
    REQUIRE(p->used == p->reserved);
    ChildResult r = run_child([&] {
      nebula_free(victim);
      if (fcache_held(t_heap, cls) != 1) _exit(3);  // (the setup did not cache it)
      nebula_free(victim);
    });
    expect_abort(r, victim, "free", "double free");
    r = run_child([&] {
      nebula_free(victim);
      if (fcache_held(t_heap, cls) != 1 || p->used != p->reserved) _exit(3);
      (void)!nebula_realloc(victim, n);  // fits: a block taken for live would be handed back
    });
    expect_abort(r, victim, "realloc", "freed already");
    for (void* b : v) nebula_free(b);
  }
}

TEST_CASE("bad input (default mode): a double free after other frees is still found") {
  settle();
  void* a[50];
  for (auto& x : a) x = nebula_malloc(48);
  void* victim = a[20];
  ChildResult r = run_child([&a, victim] {
    for (auto x : a) nebula_free(x);
    nebula_free(victim);
  });
  expect_abort(r, victim, "free", "double free");
  for (auto x : a) nebula_free(x);
}

TEST_CASE("bad input (default mode): free of an interior pointer of a small or medium block aborts") {
  settle();
  for (size_t size : {size_t{32}, size_t{48}, size_t{160}, size_t{1000}, size_t{20000}}) {
    CAPTURE(size);
    auto* p = static_cast<uint8_t*>(nebula_malloc(size));
    REQUIRE(p != nullptr);
    for (size_t off : {size_t{16}, size / 2 & ~size_t{15}, size_t{8}}) {
      if (off == 0) continue;
      void* q = p + off;
      ChildResult r = run_child([q] { nebula_free(q); });
      expect_abort(r, q, "free", "middle of a");
    }
    nebula_free(p);
  }
}

// A move (200 bytes) goes through realloc's slow path; a size that fits the block (60) through
// its fast path, where the freed block's key sends it to the slow path too. Both abort.
TEST_CASE("bad input (default mode): realloc of a freed block aborts") {
  settle();
  for (size_t n : {size_t{200}, size_t{60}}) {
    CAPTURE(n);
    void* keep = nebula_malloc(64);  // keeps the page alive
    void* p = nebula_malloc(64);
    ChildResult r = run_child([p, n] {
      nebula_free(p);
      void* q = nebula_realloc(p, n);
      (void)q;
    });
    expect_abort(r, p, "realloc", "freed");
    nebula_free(p);
    nebula_free(keep);
  }
}

// A live block whose second word happens to hold the free key takes the slow path, which finds
// it on no free list and keeps it in place.
TEST_CASE("realloc: a live block that holds the free key in its data stays in place") {
  settle();
  void* keep = nebula_malloc(64);  // the page is not all live: the fast path reads the key
  auto* p = static_cast<uintptr_t*>(nebula_malloc(64));
  p[0] = 11;
  p[1] = g_free_key;
  void* q = nebula_realloc(p, 60);
  CHECK(q == p);
  CHECK(p[0] == 11);
  CHECK(p[1] == g_free_key);
  nebula_free(q);
  nebula_free(keep);
}

// realloc does not read the block when its page is the caller's, every block of it is handed
// out and none was freed by another thread since (page_all_live). A block another thread freed
// is still counted in use on its page: on the page's thread_free list, on the owner heap's
// delayed list (the page was full) or in the freeing thread's foreign cache. Each is caught.
TEST_CASE("bad input (default mode): realloc of a block another thread freed aborts on a page with every block handed out") {
  RunsOff classes;
  settle();
  const size_t kSize = 8192;
  for (int where : {0, 1, 2}) {  // thread_free, the delayed list, a foreign cache
    CAPTURE(where);
    std::vector<void*> blocks;
    Page* page = nullptr;
    void* p = nullptr;
    ChildResult r = run_child([&] {
      // As in a process where no thread has cached others' blocks yet (earlier tests in this
      // process may have turned a cache on): the shortcut is live, and each case must get past it.
      // Nor may this thread's heap (the parent's) turn its cache on meanwhile, as it does at a
      // 64th slow-path allocation that follows many remote frees (those the earlier tests made:
      // since stop 42 the maintenance flushes idle caches, which moved where that tick lands).
      nebula_free(nebula_malloc(size_t{64}));  // the heap is live
      t_heap->ticks = 0;
      t_heap->fc_remote_mark = t_heap->stats.remote_frees;
      g_fcache_ever.store(false);
      blocks.push_back(nebula_malloc(kSize));
      page = page_of_ptr(blocks[0]);
      while (page->used < page->reserved) {
        blocks.push_back(nebula_malloc(kSize));
        if (page_of_ptr(blocks.back()) != page) _exit(3);
      }
      if (where == 1) blocks.push_back(nebula_malloc(kSize));  // the page goes to the full list
      p = blocks[3];
      std::atomic<int> step{0};
      std::thread t([&] {
        if (where == 2) {
          nebula_free(nebula_malloc(size_t{64}));  // this thread has a heap
          t_heap->fc_on = fcache_ready(t_heap);  // and caches (as after many remote frees)
        }
        nebula_free(p);
        step = 1;
        while (step.load() != 2) std::this_thread::yield();  // keep a cache alive
      });
      while (step.load() != 1) std::this_thread::yield();
      if (where == 0 && thread_free_head(page) != p) _exit(4);
      if (where == 1 && t_heap->delayed_free.load() != p) _exit(5);
      if (page->used != page->reserved) _exit(6);
      if (g_fcache_ever.load() != (where == 2)) _exit(7);
      void* q = nebula_realloc(p, kSize - 100);  // in place, if it were live
      (void)q;
      step = 2;
      t.join();
    });
    p = nullptr;
    REQUIRE(WIFSIGNALED(r.status));
    CHECK(r.err.find("realloc") != std::string::npos);
    CHECK(r.err.find("freed") != std::string::npos);
  }
}

// The same page with every block live: realloc in place keeps the block, without reading it.
TEST_CASE("realloc: in place on a page with every block handed out") {
  RunsOff classes;
  settle();
  const size_t kSize = 8192;
  std::vector<void*> blocks;
  blocks.push_back(nebula_malloc(kSize));
  Page* page = page_of_ptr(blocks[0]);
  while (page->used < page->reserved) blocks.push_back(nebula_malloc(kSize));
  for (void*& b : blocks) {
    REQUIRE(page_of_ptr(b) == page);
    fill(b, kSize - 200, 7);
    void* q = nebula_realloc(b, kSize - 100);
    CHECK(q == b);
    CHECK(check_fill(q, kSize - 200, 7));
  }
  for (void* b : blocks) nebula_free(b);
}

TEST_CASE("bad input: a block whose second word happens to hold the key is not a double free") {
  settle();
  auto* p = static_cast<uintptr_t*>(nebula_malloc(32));
  REQUIRE(p != nullptr);
  p[1] = g_free_key;  // user data that looks like the free marker
  Segment* s = segment_of(p);
  Page* page = page_of(s, p);
  uint32_t used = page->used;
  nebula_free(p);     // confirmed on the slow path: not on any free list, so freed normally
  CHECK(page->used == used - 1);
  CHECK(block_is_free_any(s, page, reinterpret_cast<Block*>(p)));
}

// Medium runs (core/runs.cpp): the page's bookkeeping decides, with no header in user memory.
TEST_CASE("bad input (default mode): runs blocks: a double free, a free inside a block, a realloc of a freed one") {
  RunsOn runs;
  settle();
  auto* keep = static_cast<uint8_t*>(nebula_malloc(9000));
  auto* p = static_cast<uint8_t*>(nebula_malloc(9000));
  REQUIRE(page_of_ptr(p)->kind == PageKind::kRuns);
  expect_abort(run_child([p] { nebula_free(p); nebula_free(p); }), p, "free", "double free");
  expect_abort(run_child([p] {
    std::thread t([p] { nebula_free(p); nebula_free(p); });  // both on the page's remote list
    t.join();
  }), p, "free", "double free");
  expect_abort(run_child([p] {
    std::thread t([p] { nebula_free(p); });
    t.join();
    nebula_free(p);  // by the owner, before it collected the first
  }), p, "free", "double free");
  expect_abort(run_child([p] { nebula_free(p + 512); }), p + 512, "free", "middle of a");
  expect_abort(run_child([p] { nebula_free(p + 16); }), p + 16, "free", "middle of a");
  expect_abort(run_child([p] {
    nebula_free(p);
    void* q = nebula_realloc(p, 12000);
    (void)q;
  }), p, "realloc", "freed");
  // A live block whose second and third words hold the remote-free mark by chance? Once in
  // 2^128; with only the second word (the key) it is a live block like any.
  reinterpret_cast<uintptr_t*>(p)[1] = g_free_key;
  nebula_free(p);
  nebula_free(keep);
}

// A write after free into a runs block cannot reach the bins: a free run's node lives in the
// page's bookkeeping, not in the run. The allocator hands out the right blocks afterwards, and
// the heap's bookkeeping stays whole.
TEST_CASE("bad input (default mode): a write after free into a runs block's free run changes nothing") {
  RunsOn runs;
  Worker w;
  w.run([] {
    auto* a = static_cast<uint8_t*>(nebula_malloc(10000));
    auto* b = static_cast<uint8_t*>(nebula_malloc(10000));  // after a: a's run cannot merge forward
    REQUIRE(b == a + 10240);
    nebula_free(a);  // a's 20 units: a free run
    memset(a, 0xa5, 10240);  // every byte of the freed run, where a node in the run would be
    CHECK(check_heap_invariants(t_heap) == 0);
    auto* c = static_cast<uint8_t*>(nebula_malloc(10000));  // the bin of 20 units: a's run
    CHECK(c == a);
    memset(c, 0x11, 10000);
    nebula_free(b);
    nebula_free(c);  // a, b and the rest of the page are one free run again
    memset(a, 0x5a, 20480);
    CHECK(check_heap_invariants(t_heap) == 0);
    std::vector<uint8_t*> v;
    for (int i = 0; i < 40; ++i) {  // the page, cut again: every block apart from every other
      v.push_back(static_cast<uint8_t*>(nebula_malloc(12000)));
      memset(v.back(), i, 12000);
    }
    for (int i = 0; i < 40; ++i) CHECK(filled(v[static_cast<size_t>(i)], 12000, static_cast<uint8_t>(i)));
    CHECK(check_heap_invariants(t_heap) == 0);
    for (uint8_t* p : v) nebula_free(p);
  });
}
