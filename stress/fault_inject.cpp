// stress/fault_inject.cpp: the allocator when the OS refuses memory.
static const char* kAbout =
    "Models a process on a machine that runs out of memory (strict overcommit, a full\n"
    "container, mmap limits): the allocator's requests to the OS fail on purpose, through\n"
    "nebula_mem_fault_inject() (--mode api) or NEBULA_MEM_FAULT_INJECT=random:N / every:N /\n"
    "nth:N from the start of the process (--mode env). Every API is driven across every tier:\n"
    "malloc, calloc, realloc (growing and shrinking, across tiers), posix_memalign,\n"
    "aligned_alloc, memalign, operator new, new[], nothrow new and aligned new. Checked: every\n"
    "failure is NULL with errno ENOMEM (posix_memalign: ENOMEM returned, the out pointer\n"
    "untouched), std::bad_alloc from the throwing operator new forms and nullptr from the\n"
    "nothrow ones; nothing crashes; live blocks keep their contents; a failed realloc leaves\n"
    "the old block intact and live; a new-handler runs before bad_alloc and its retry works;\n"
    "after everything is freed and nebula_mem_collect() runs, nebula_mem_get_stats() shows\n"
    "the committed bytes, segments and live bytes back near their start values (nothing\n"
    "leaked by a failure path); and after nebula_mem_fault_inject(\"off\") every API works in\n"
    "every tier again. The closing line gives the faults injected (nebula_mem_faults_injected)\n"
    "and the API failures they caused.";

#include "common.hpp"

#include <mutex>
#include <thread>
#include <vector>

#include "nebula/mem.h"

using namespace stress;

namespace {

int (*f_inject)(const char*) = nullptr;
uint64_t (*f_injected)() = nullptr;
int (*f_stats)(nebula_mem_stats*) = nullptr;
int (*f_collect)() = nullptr;

enum Op : unsigned {
  kMalloc, kCalloc, kReallocGrow, kReallocShrink, kPosixMemalign, kAlignedAlloc, kMemalign, kNew, kNewArray,
  kNewNothrow, kNewArrayNothrow, kNewAligned, kNewAlignedNothrow, kOpCount
};
const char* kOpNames[kOpCount] = {"malloc", "calloc", "realloc-grow", "realloc-shrink", "posix_memalign",
                                  "aligned_alloc", "memalign", "new", "new[]", "new(nothrow)",
                                  "new[](nothrow)", "new(align)", "new(align,nothrow)"};

struct Tally {
  std::atomic<uint64_t> calls[kOpCount] = {};
  std::atomic<uint64_t> fails[kOpCount] = {};
  std::atomic<uint64_t> fails_by_tier[kTierCount] = {};
  uint64_t total_fails() const {
    uint64_t t = 0;
    for (auto& f : fails) t += f.load();
    return t;
  }
};
Tally g_tally;
std::atomic<bool> g_faults_on{false};   // failures are expected only while injection is on

// One call of `op` for n bytes. On success *out is the filled block. On failure checks the
// failure's form, counts it, and returns false. For the realloc ops `io` is the block to
// reallocate (left intact and live on failure).
bool call(Rng& r, Op op, size_t n, Block* io) {
  g_tally.calls[op]++;
  void* p = nullptr;
  size_t align = 0;
  Via via = Via::kFree;
  bool threw = false, failed = false;
  errno = 0;
  switch (op) {
    case kMalloc: p = malloc(n); break;
    case kCalloc: p = calloc(n % 16 == 0 ? n / 16 : 1, n % 16 == 0 ? 16 : n); break;
    case kReallocGrow:
    case kReallocShrink: {
      Block old = *io;
      check(old, "fault_inject: block before realloc");
      p = realloc(old.p, n);
      if (p == nullptr) {
        // the old block must be intact and still ours
        if (!check(old, "fault_inject: block after a failed realloc")) {}
        if (malloc_usable_size(old.p) < old.n) error("fault_inject: failed realloc shrank the old block's usable size");
        failed = true;
        break;
      }
      size_t keep = old.n < n ? old.n : n;
      size_t bad = verify(p, keep, old.seed);
      if (bad != kIntact) error("fault_inject: realloc(%p, %zu) = %p lost the contents at %zu", old.p, n, p, bad);
      break;
    }
    case kPosixMemalign: {
      align = size_t{64} << r.below(12);   // 64 B .. 128 KiB
      void* sentinel = reinterpret_cast<void*>(0x1234);
      p = sentinel;
      int rc = posix_memalign(&p, align, n);
      if (rc != 0) {
        if (rc != ENOMEM) error("fault_inject: posix_memalign(%zu, %zu) returned %d, not ENOMEM", align, n, rc);
        if (p != sentinel) error("fault_inject: posix_memalign changed the out pointer on failure");
        g_tally.fails[op]++;
        g_tally.fails_by_tier[tier_of(n)]++;
        if (!g_faults_on.load()) error("fault_inject: posix_memalign(%zu, %zu) failed with injection off", align, n);
        return false;
      }
      break;
    }
    case kAlignedAlloc:
      align = size_t{32} << r.below(12);
      n = (n + align - 1) & ~(align - 1);
      p = aligned_alloc(align, n);
      break;
    case kMemalign: align = size_t{32} << r.below(16); p = memalign(align, n); break;
    case kNew:
      via = Via::kDelete;
      try { p = ::operator new(n); } catch (const std::bad_alloc&) { threw = true; } catch (...) { error("fault_inject: new threw something else than bad_alloc"); threw = true; }
      break;
    case kNewArray:
      via = Via::kDeleteArray;
      try { p = ::operator new[](n); } catch (const std::bad_alloc&) { threw = true; } catch (...) { error("fault_inject: new[] threw something else than bad_alloc"); threw = true; }
      break;
    case kNewNothrow: via = Via::kDelete; p = ::operator new(n, std::nothrow); break;
    case kNewArrayNothrow: via = Via::kDeleteArray; p = ::operator new[](n, std::nothrow); break;
    case kNewAligned:
      via = Via::kDeleteAligned;
      align = size_t{32} << r.below(14);
      try { p = ::operator new(n, std::align_val_t(align)); } catch (const std::bad_alloc&) { threw = true; } catch (...) { error("fault_inject: aligned new threw something else than bad_alloc"); threw = true; }
      break;
    case kNewAlignedNothrow:
      via = Via::kDeleteAligned;
      align = size_t{32} << r.below(14);
      p = ::operator new(n, std::align_val_t(align), std::nothrow);
      break;
    case kOpCount: break;
  }
  if (p == nullptr || threw || failed) {
    int e = errno;
    g_tally.fails[op]++;
    g_tally.fails_by_tier[tier_of(n)]++;
    if (!g_faults_on.load()) error("fault_inject: %s(%zu) failed with fault injection off", kOpNames[op], n);
    bool c_api = op == kMalloc || op == kCalloc || op == kReallocGrow || op == kReallocShrink || op == kAlignedAlloc ||
                 op == kMemalign;
    if (c_api && e != ENOMEM) error("fault_inject: %s(%zu) returned NULL with errno %d, not ENOMEM", kOpNames[op], n, e);
    if ((op == kNew || op == kNewArray || op == kNewAligned) && !threw)
      error("fault_inject: %s(%zu) returned NULL instead of throwing", kOpNames[op], n);
    return false;
  }
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if ((a & 15) != 0 || (align != 0 && (a & (align - 1)) != 0)) error("fault_inject: %s(%zu) = %p misaligned (align %zu)", kOpNames[op], n, p, align);
  if (malloc_usable_size(p) < n) error("fault_inject: %s(%zu) = %p: usable size %zu", kOpNames[op], n, p, malloc_usable_size(p));
  if (op == kCalloc) {
    size_t nz = find_nonzero(p, n);
    if (nz != kIntact) error("fault_inject: calloc(%zu) = %p not zero at %zu", n, p, nz);
  }
  *io = make_block(p, n, op, align, via);
  return true;
}

// Sizes of every tier (and the tier edges).
size_t tier_size(Rng& r, unsigned t) {
  static const size_t edges[] = {16, 8 * KiB, 8 * KiB + 1, 128 * KiB, 128 * KiB + 1, 2 * MiB, 2 * MiB + 1};
  if (r.chance(10)) return edges[r.below(7)];
  return size_in_tier(r, t, 64 * MiB);
}

// A phase: with `spec` on, make `rounds` passes over every op and tier, keeping up to `keep`
// blocks live (so new pages and segments keep being needed), freeing some on the way.
struct Phase {
  uint64_t ops = 0, fails = 0, injected = 0;
};
Phase run_ops(Rng& r, std::vector<Block>& live, size_t keep, unsigned rounds, size_t huge_cap) {
  Phase ph;
  uint64_t f0 = g_tally.total_fails();
  size_t huge_live = 0;
  for (Block& b : live)
    if (b.p && tier_of(b.n) == kHuge) huge_live += b.n;
  for (unsigned round = 0; round < rounds; ++round) {
    for (unsigned t = 0; t < kTierCount; ++t) {
      for (unsigned op = 0; op < kOpCount; ++op) {
        size_t n = tier_size(r, t);
        if (t == kHuge && huge_live + n > huge_cap) n = tier_size(r, kSmall);
        Block* slot = &live[r.below(keep)];
        if (op == kReallocGrow || op == kReallocShrink) {
          // realloc an existing malloc-family block; make one if the slot is empty
          if (slot->p == nullptr || slot->via != Via::kFree) {
            if (slot->p) {
              if (tier_of(slot->n) == kHuge) huge_live -= slot->n;
              release(*slot, "fault_inject: free");
            }
            if (!call(r, kMalloc, tier_size(r, kSmall), slot)) continue;
          }
          size_t target = op == kReallocGrow ? slot->n + n : (slot->n > 1 ? r.range(1, slot->n - 1) : 1);
          if (tier_of(target) == kHuge && huge_live + target > huge_cap) target = slot->n / 2 + 1;
          Block nb = *slot;
          size_t oldn = slot->n;
          if (call(r, static_cast<Op>(op), target, &nb)) {
            if (tier_of(oldn) == kHuge) huge_live -= oldn;
            if (tier_of(nb.n) == kHuge) huge_live += nb.n;
            *slot = nb;
          }
        } else {
          if (slot->p) {
            if (tier_of(slot->n) == kHuge) huge_live -= slot->n;
            release(*slot, "fault_inject: free");
          }
          if (call(r, static_cast<Op>(op), n, slot) && tier_of(n) == kHuge) huge_live += slot->n;
        }
        ++ph.ops;
      }
      // bulk small allocations, so that new pages (and segments) are needed all the time
      for (int k = 0; k < 64; ++k) {
        Block* slot = &live[r.below(keep)];
        if (slot->p) {
          if (tier_of(slot->n) == kHuge) huge_live -= slot->n;
          release(*slot, "fault_inject: free");
        }
        call(r, r.chance(50) ? kMalloc : kNew, r.range(1024, 8 * KiB), slot);
        ++ph.ops;
      }
    }
  }
  ph.fails = g_tally.total_fails() - f0;
  return ph;
}

void free_all(std::vector<Block>& v, const char* where) {
  for (Block& b : v)
    if (b.p) release(b, where);
}

nebula_mem_stats stats_now() {
  nebula_mem_stats s{};
  if (f_collect) f_collect();
  if (f_stats) f_stats(&s);
  return s;
}

// After everything is freed: committed bytes, segments and live bytes near the start. "Near":
// the test's own long-lived blocks (strings, tables, stdio) made during a phase may keep a page
// of a segment made during the phase, so a few segments and MiB more are allowed; a leak on a
// failure path would leave one per failure, thousands of them.
void check_no_leak(const nebula_mem_stats& base, const char* when) {
  nebula_mem_stats s = stats_now();
  if (getenv("FAULT_VERBOSE"))
    printf("fault_inject: %s: segments %llu (start %llu), committed %llu (start %llu), live %llu (start %llu), "
           "abandoned %llu reclaimed %llu heaps %llu\n",
           when, static_cast<unsigned long long>(s.segments), static_cast<unsigned long long>(base.segments),
           static_cast<unsigned long long>(s.committed_bytes), static_cast<unsigned long long>(base.committed_bytes),
           static_cast<unsigned long long>(s.live_bytes), static_cast<unsigned long long>(base.live_bytes),
           static_cast<unsigned long long>(s.abandoned_segments), static_cast<unsigned long long>(s.reclaimed_segments),
           static_cast<unsigned long long>(s.heaps));
  const uint64_t slack = 4 * MiB;
  if (s.segments > base.segments + 3)
    error("fault_inject: %s: %llu segments, at the start %llu", when, static_cast<unsigned long long>(s.segments),
          static_cast<unsigned long long>(base.segments));
  if (s.committed_bytes > base.committed_bytes + slack)
    error("fault_inject: %s: %llu bytes committed, at the start %llu", when,
          static_cast<unsigned long long>(s.committed_bytes), static_cast<unsigned long long>(base.committed_bytes));
  if (s.live_bytes > base.live_bytes + 512 * KiB)
    error("fault_inject: %s: %llu live bytes, at the start %llu", when, static_cast<unsigned long long>(s.live_bytes),
          static_cast<unsigned long long>(base.live_bytes));
  if (s.huge_bytes > base.huge_bytes)
    error("fault_inject: %s: %llu bytes in huge blocks, at the start %llu", when,
          static_cast<unsigned long long>(s.huge_bytes), static_cast<unsigned long long>(base.huge_bytes));
}

// With injection off, every op in every tier must work.
void check_all_work(Rng& r, const char* when) {
  std::vector<Block> v(static_cast<size_t>(kOpCount) * static_cast<size_t>(kTierCount));
  size_t k = 0;
  for (unsigned t = 0; t < kTierCount; ++t)
    for (unsigned op = 0; op < kOpCount; ++op) {
      Block& b = v[k++];
      size_t n = tier_size(r, t);
      if (op == kReallocGrow || op == kReallocShrink) {
        if (!call(r, kMalloc, op == kReallocGrow ? 100 : n + 100, &b)) {
          error("fault_inject: %s: malloc failed", when);
          continue;
        }
        Block nb = b;
        if (call(r, static_cast<Op>(op), op == kReallocGrow ? n + 100 : n, &nb)) b = nb;
        else error("fault_inject: %s: %s(%zu) failed", when, kOpNames[op], n);
      } else if (!call(r, static_cast<Op>(op), n, &b)) {
        error("fault_inject: %s: %s(%zu) failed", when, kOpNames[op], n);
      }
    }
  free_all(v, "fault_inject: free after the all-work check");
}

// The blocks that live through a phase: made before injection is turned on, verified after.
std::vector<Block> make_survivors(Rng& r) {
  std::vector<Block> v;
  for (unsigned t = 0; t < kTierCount; ++t)
    for (int k = 0; k < (t == kHuge ? 2 : 8); ++k) {
      Block b;
      if (call(r, k % 2 ? kMalloc : kNew, tier_size(r, t), &b)) v.push_back(b);
    }
  return v;
}

// ---- the new-handler: runs before bad_alloc, and its retry works --------------------------------
std::atomic<int> g_handler_calls{0};
void handler_turns_off() {
  g_handler_calls++;
  g_faults_on = false;
  f_inject("off");
}

void new_handler_test(Rng& r) {
  (void)r;
  // every:1 makes every request to the OS fail: a fresh huge block cannot be had
  g_faults_on = true;
  if (f_inject("every:1") != 0) error("fault_inject: nebula_mem_fault_inject(\"every:1\") refused");
  std::set_new_handler(handler_turns_off);
  void* p = nullptr;
  try {
    p = ::operator new(48 * MiB);
  } catch (const std::bad_alloc&) {
    error("fault_inject: new threw bad_alloc although the new-handler made room");
  }
  std::set_new_handler(nullptr);
  if (g_handler_calls.load() != 1) error("fault_inject: the new-handler ran %d times, not once", g_handler_calls.load());
  if (p) {
    Block b = make_block(p, 48 * MiB, 1, 0, Via::kDelete);
    release(b, "fault_inject: block made after the new-handler");
  }
  // with no handler: bad_alloc, and malloc's NULL + ENOMEM
  g_faults_on = true;
  f_inject("every:1");
  bool threw = false;
  try {
    p = ::operator new(40 * MiB);
    ::operator delete(p);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  if (!threw) error("fault_inject: with every request refused, new(40 MiB) did not throw");
  errno = 0;
  p = malloc(40 * MiB);
  if (p != nullptr || errno != ENOMEM) error("fault_inject: with every request refused, malloc(40 MiB) = %p errno %d", p, errno);
  free(p);
  f_inject("off");
  g_faults_on = false;
}

// ---- threads under injection -----------------------------------------------------------------
// Threads that allocate through every op, realloc, free and pass blocks to each other while
// faults are injected. Once they run, nothing but `call` allocates: the tables, the hand-over
// area and the threads are made before (`go` starts them).
struct Threaded {
  struct Handoff {
    std::mutex m;
    std::vector<Block> v;
    size_t n = 0;
    explicit Handoff(size_t cap) : v(cap) {}
    bool put(const Block& b) {
      std::lock_guard<std::mutex> g(m);
      if (n == v.size()) return false;
      v[n++] = b;
      return true;
    }
    size_t take(Block* out, size_t max) {
      std::lock_guard<std::mutex> g(m);
      size_t k = 0;
      while (n > 0 && k < max) out[k++] = v[--n];
      return k;
    }
  };
  unsigned nt;
  uint64_t iters;
  double seconds;
  Handoff handoff;
  std::vector<std::vector<Block>> tables;
  std::vector<std::thread> ts;
  std::atomic<bool> go{false};
  std::atomic<uint64_t> ops{0};
  unsigned started = 0, start_failures = 0;

  Threaded(unsigned n, uint64_t it, double secs)
      : nt(n), iters(it), seconds(secs), handoff(4096), tables(n, std::vector<Block>(256)) {
    ts.reserve(n);
  }
  void body(unsigned t) {
    Rng tr(0x7a11 * 13 + t);
    std::vector<Block>& mine = tables[t];
    Block got[64];
    while (!go.load()) std::this_thread::yield();
    double deadline = seconds > 0 ? now_s() + seconds : 1e300;
    for (uint64_t i = 0; (iters == 0 || i < iters) && ((i & 63) != 0 || now_s() < deadline); ++i) {
      Block& b = mine[tr.below(mine.size())];
      if (b.p) {
        if (b.via == Via::kFree && tr.chance(15)) {
          Block nb = b;
          Op op = tr.chance(50) ? kReallocGrow : kReallocShrink;
          size_t target = op == kReallocGrow ? b.n + tier_size(tr, static_cast<unsigned>(tr.below(3))) : tr.range(1, b.n);
          if (call(tr, op, target, &nb)) b = nb;
        } else if (tr.chance(25) && handoff.put(b)) {
          b = Block{};
        } else {
          release(b, "fault_inject: thread free");
        }
      } else {
        unsigned tier = tr.chance(88) ? kSmall : static_cast<unsigned>(tr.below(kTierCount));
        size_t n = tier == kHuge ? tr.range(2 * MiB + 1, 16 * MiB) : tier_size(tr, tier);
        Op op = static_cast<Op>(tr.below(kOpCount));
        if (op == kReallocGrow || op == kReallocShrink) op = kCalloc;
        call(tr, op, n, &b);
      }
      if ((i & 31) == 0) {
        size_t k = handoff.take(got, 64);
        for (size_t j = 0; j < k; ++j) release(got[j], "fault_inject: cross-thread free");
      }
      ops++;
    }
    free_all(mine, "fault_inject: thread final free");
  }
  // pthread_create allocates too (the thread's TLS): under injection it may fail; retry
  void start() {
    for (unsigned t = 0; t < nt; ++t) {
      for (int attempt = 0; attempt < 1000; ++attempt) {
        try {
          ts.emplace_back(&Threaded::body, this, t);
          ++started;
          break;
        } catch (const std::system_error&) {
          ++start_failures;
        } catch (const std::bad_alloc&) {
          ++start_failures;
        }
      }
    }
  }
  void join() {
    for (auto& t : ts) t.join();
  }
  void free_leftovers() {
    Block got[64];
    while (size_t k = handoff.take(got, 64))
      for (size_t j = 0; j < k; ++j) release(got[j], "fault_inject: leftover");
  }
};

// ---- realloc when the OS refuses everything ----------------------------------------------------
// Growing into a new tier and shrinking a huge block below the huge sizes both need a new block;
// with every request refused (every:1) they must fail, and leave the old block intact and live.
// A huge block that stays huge shrinks where it is, asking the OS for nothing: it must succeed
// and keep its address. So must any shrink: one whose copy finds no memory keeps its block
// (secure mode shrinks huge blocks by copying, and a huge block shrunk to a large one moves).
void realloc_refusal_test(Rng& r) {
  struct Case {
    size_t from, to;
  } cases[] = {{100, 64 * MiB},           {50 * KiB, 30 * MiB}, {1 * MiB, 10 * MiB},
               {20 * MiB, 3 * MiB},       {40 * MiB, 2 * MiB + 4096}, {24 * MiB, 12 * MiB - 1},
               {20 * MiB, 1 * MiB}};
  std::vector<Block> v;
  for (const Case& c : cases) {
    Block b;
    if (!call(r, kMalloc, c.from, &b)) error("fault_inject: malloc(%zu) failed with injection off", c.from);
    v.push_back(b);
  }
  g_faults_on = true;
  f_inject("every:1");
  for (size_t k = 0; k < v.size(); ++k) {
    if (!v[k].p) continue;
    Block nb = v[k];
    Op op = cases[k].to > cases[k].from ? kReallocGrow : kReallocShrink;
    bool in_place = op == kReallocShrink;
    if (call(r, op, cases[k].to, &nb)) {
      if (!in_place)
        error("fault_inject: realloc(%zu -> %zu) succeeded with every request to the OS refused", cases[k].from,
              cases[k].to);
      else if (nb.p != v[k].p)
        error("fault_inject: realloc(%zu -> %zu) moved a block with every request to the OS refused", cases[k].from, cases[k].to);
      v[k] = nb;
    } else if (in_place) {
      error("fault_inject: realloc(%zu -> %zu) failed: a shrink keeps its block when it cannot move it", cases[k].from,
            cases[k].to);
    }
  }
  f_inject("off");
  g_faults_on = false;
  for (size_t k = 0; k < v.size(); ++k) {
    if (!v[k].p) continue;
    Block nb = v[k];
    Op op = cases[k].to > cases[k].from ? kReallocGrow : kReallocShrink;
    if (!call(r, op, cases[k].to, &nb)) error("fault_inject: realloc(%zu -> %zu) failed after injection was turned off", cases[k].from, cases[k].to);
    else v[k] = nb;
  }
  free_all(v, "fault_inject: free after the realloc refusal test");
}

struct Spec {
  const char* spec;
  unsigned rounds;
  // Some API call must fail under it. A single refusal is absorbed: the allocator purges and
  // retries (twice) before it fails, so nth:N and every:N with N > 1 need not fail any call.
  bool must_fail;
};

int mode_api(const Options& o, Run& run) {
  Rng r(o.seed);
  // warm up every tier once so that the baseline includes the arenas and this thread's heap
  {
    std::vector<Block> w = make_survivors(r);
    free_all(w, "fault_inject: warm-up");
  }
  nebula_mem_stats base0 = stats_now();
  std::vector<Block> survivors = make_survivors(r);
  nebula_mem_stats base = stats_now();   // with the survivors live
  size_t keep = static_cast<size_t>((o.smoke ? 256 : 1024) * o.scale);
  size_t huge_cap = static_cast<size_t>(256 * MiB * o.scale);
  std::vector<Spec> specs = {
      {"nth:1", 1, false},      {"nth:2", 1, false},      {"nth:3", 1, false},     {"nth:7", 1, false},
      {"every:1", 1, true},     {"every:2", 2, false},    {"every:3", 2, false},   {"every:7", 2, false},
      {"random:2:1", 2, true},  {"random:3:2", 2, false}, {"random:5:3", 2, false}, {"random:20:4", 2, false},
  };
  Bound bound(o);
  uint64_t ops = 0, phases = 0;
  std::string per_spec;
  for (int pass = 0; pass == 0 || bound.time_left(); ++pass) {
    for (const Spec& s : specs) {
      std::vector<Block> live(keep);
      uint64_t inj0 = f_injected();
      g_faults_on = true;
      if (f_inject(s.spec) != 0) error("fault_inject: nebula_mem_fault_inject(\"%s\") refused", s.spec);
      Phase ph = run_ops(r, live, keep, s.rounds * (pass == 0 ? 1 : 2), huge_cap);
      f_inject("off");
      g_faults_on = false;
      uint64_t inj = f_injected() - inj0;
      ops += ph.ops;
      ++phases;
      if (inj == 0) error("fault_inject: %s: no fault was injected", s.spec);
      if (s.must_fail && ph.fails == 0) error("fault_inject: %s: %llu faults injected but no API call failed", s.spec, static_cast<unsigned long long>(inj));
      if (strncmp(s.spec, "nth:", 4) == 0 && inj != 1) error("fault_inject: %s: %llu faults injected, not 1", s.spec, static_cast<unsigned long long>(inj));
      if (pass == 0) per_spec += std::string(" ") + s.spec + "=" + std::to_string(inj) + "/" + std::to_string(ph.fails);
      for (Block& b : survivors) check(b, "fault_inject: survivor after a phase");
      free_all(live, "fault_inject: free after a phase");
      check_no_leak(base, s.spec);
      check_all_work(r, s.spec);
      if (!bound.time_left() && pass > 0) break;
    }
    if (o.smoke) break;
  }
  new_handler_test(r);
  realloc_refusal_test(r);
  // threads: random faults while the threads allocate, realloc and free across threads
  {
    {
      unsigned nt = o.threads < 2 ? 2 : o.threads;
      Threaded th(nt, o.smoke ? 3000 : 20000, 0);
      th.start();
      g_faults_on = true;
      f_inject("random:4:99");
      th.go = true;
      th.join();
      f_inject("off");
      g_faults_on = false;
      th.free_leftovers();
      ops += th.ops;
    }
    for (Block& b : survivors) check(b, "fault_inject: survivor after the threads");
    check_no_leak(base, "after the threaded phase");
    check_all_work(r, "after the threaded phase");
  }
  free_all(survivors, "fault_inject: survivors");
  check_no_leak(base0, "at the end");
  nebula_mem_stats end = stats_now();
  uint64_t fails = g_tally.total_fails();
  printf("fault_inject: faults injected / API failures per spec:%s\n", per_spec.c_str());
  std::string per_op;
  for (unsigned op = 0; op < kOpCount; ++op) per_op += std::string(" ") + kOpNames[op] + "=" + std::to_string(g_tally.fails[op].load());
  printf("fault_inject: failures per API:%s\n", per_op.c_str());
  for (unsigned op = 0; op < kOpCount; ++op) {
    // A shrink never fails: one whose copy finds no memory keeps its block.
    if (op == kReallocShrink) {
      if (g_tally.fails[op].load() != 0) error("fault_inject: %s failed under injection", kOpNames[op]);
    } else if (g_tally.fails[op].load() == 0) {
      error("fault_inject: %s never failed under injection", kOpNames[op]);
    }
  }
  for (unsigned t = 0; t < kTierCount; ++t)
    if (g_tally.fails_by_tier[t].load() == 0) error("fault_inject: no failure in the %s tier", tier_name(t));
  return run.finish(ops, kv("phases", phases) + kv("faults_injected", f_injected()) + kv("api_failures", fails) +
                             kv("new_handler_calls", static_cast<unsigned long long>(g_handler_calls.load())) +
                             kv("segments_start", base0.segments) + kv("segments_end", end.segments) +
                             kv("committed_kib_start", base0.committed_bytes >> 10) +
                             kv("committed_kib_end", end.committed_bytes >> 10));
}

// NEBULA_MEM_FAULT_INJECT from the start: threads allocate and free with faults on, then the
// program turns injection off and checks that everything works and nothing leaked.
int mode_env(const Options& o, Run& run) {
  const char* spec = getenv("NEBULA_MEM_FAULT_INJECT");
  bool on = spec != nullptr && strcmp(spec, "off") != 0;
  g_faults_on = on;
  Rng r(o.seed);
  // Injection is on from the start, so the test's own containers may throw too: retry.
  Threaded* th = nullptr;
  for (int attempt = 0; th == nullptr && attempt < 1000; ++attempt) {
    try {
      th = new Threaded(o.threads, o.iters, o.seconds);
    } catch (const std::bad_alloc&) {
    }
  }
  if (th == nullptr) {
    error("fault_env: the test's own tables could not be allocated in 1000 tries");
    return run.finish(0);
  }
  th->start();
  th->go = true;
  th->join();
  uint64_t injected = f_injected();
  f_inject("off");
  g_faults_on = false;
  th->free_leftovers();
  if (on && injected == 0) error("fault_env: NEBULA_MEM_FAULT_INJECT=%s but no fault was injected", spec);
  if (th->started == 0) error("fault_env: no thread could be started");
  nebula_mem_stats s = stats_now();
  check_all_work(r, "after turning injection off");
  nebula_mem_stats e = stats_now();
  // every block this program made is freed: what is left is stdio's and the test's tables
  if (e.huge_bytes != 0) error("fault_env: %llu bytes of huge blocks still live", static_cast<unsigned long long>(e.huge_bytes));
  if (e.live_bytes > s.live_bytes + MiB)
    error("fault_env: live bytes grew from %llu to %llu", static_cast<unsigned long long>(s.live_bytes),
          static_cast<unsigned long long>(e.live_bytes));
  if (e.live_bytes > 4 * MiB) error("fault_env: %llu live bytes with every block freed", static_cast<unsigned long long>(e.live_bytes));
  std::string extra = std::string(" spec=") + (spec ? spec : "none") + kv("faults_injected", injected) +
                      kv("api_failures", g_tally.total_fails()) + kv("threads_started", th->started) +
                      kv("thread_start_failures", th->start_failures);
  uint64_t ops = th->ops;
  delete th;
  return run.finish(ops, extra);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  const char* mode = "api";
  for (int i = 0; i < argc; ++i) {
    if (strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
      mode = argv[++i];
      continue;
    }
    args.push_back(argv[i]);
  }
  Options d;
  d.name = strcmp(mode, "env") == 0 ? "fault_env" : "fault_api";
  d.seconds = 10;
  Options smoke = d;
  smoke.threads = 3;
  smoke.seconds = 2;
  Options o = parse_options(static_cast<int>(args.size()), args.data(), kAbout, d, smoke);
  f_inject = nebula_fn<int (*)(const char*)>("nebula_mem_fault_inject");
  f_injected = nebula_fn<uint64_t (*)()>("nebula_mem_faults_injected");
  f_stats = nebula_fn<int (*)(nebula_mem_stats*)>("nebula_mem_get_stats");
  f_collect = nebula_fn<int (*)()>("nebula_mem_collect");
  Run run(o);
  if (!f_inject || !f_injected || !f_stats || !f_collect) {
    printf("%s: the nebula_mem_ API is not there (not preloaded): nothing to test\n", o.name);
    return o.require_active ? 3 : 0;
  }
  if (strcmp(mode, "env") == 0) return mode_env(o, run);
  if (strcmp(mode, "api") != 0) {
    fprintf(stderr, "fault_inject: --mode api|env\n");
    return 2;
  }
  return mode_api(o, run);
}
