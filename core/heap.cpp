// core/heap.cpp: thread heaps: creation on a thread's first allocation, the generic
// allocation and free paths, delayed frees, maintenance (purge, reclaim), thread exit and fork.
//
// Owns: t_heap, g_empty_heap, the heap pool, the engine's one-time initialisation.
#include <array>
#include <cerrno>
#include <cstring>

#include "core/engine.hpp"
#include "core/budget.hpp"
#include "core/options.hpp"

namespace nebula {

__thread Heap* t_heap __attribute__((tls_model("initial-exec"))) = &g_empty_heap;
__thread bool t_shrink_copy __attribute__((tls_model("initial-exec"))) = false;

namespace {

Lock g_heaps_lock;
HeapStats g_retired_stats;       // counters of heaps whose threads exited (under the lock)
Heap* g_all_heaps = nullptr;     // every heap ever made, through next_heap (under the lock)
Heap* g_pool = nullptr;          // heaps of exited threads, ready for reuse (through full.first)
std::atomic<int> g_init_state{0};  // 0 none, 1 in progress, 2 done

void thread_done(void* arg) noexcept;
void fork_prepare() noexcept;
void fork_parent() noexcept;
void fork_child() noexcept;

// A heap for the calling thread, from the pool or new, made ready and live under the heaps lock:
// the other threads read every heap's fields under it (heaps_purge_idle, the stats walk), and
// one set up outside it raced with them (ThreadSanitizer: heaps_purge_idle's read of `live`
// against heap_init_thread's write).
void heap_reset(Heap* h);
Heap* heap_take_from_pool() {
  if (g_pool != nullptr) {
    Heap* h = g_pool;
    g_pool = h->full.first ? reinterpret_cast<Heap*>(h->full.first) : nullptr;
    return h;
  }
  // Carve heaps one at a time from a batch mapping (never freed; heaps are recycled), so that
  // a process with one thread touches only its own heap's pages, not the whole batch.
  constexpr size_t kBatch = 64 * 1024;
  static uint8_t* batch_next = nullptr;
  static uint8_t* batch_end = nullptr;
  const size_t stride = align_up(sizeof(Heap) + sizeof(RunBins), 64);  // (runs_bins)
  if (batch_next == nullptr || static_cast<size_t>(batch_end - batch_next) < stride) {
    auto* mem = static_cast<uint8_t*>(os::reserve(kBatch, os::page_size()));
    if (mem == nullptr) return nullptr;
    batch_next = mem;
    batch_end = mem + kBatch;
  }
  auto* h = reinterpret_cast<Heap*>(batch_next);
  batch_next += stride;
  h->next_heap = g_all_heaps;
  g_all_heaps = h;
  return h;
}

Heap* heap_from_pool() {
  LockGuard guard(g_heaps_lock);
  Heap* h = heap_take_from_pool();
  if (h == nullptr) return nullptr;
  heap_reset(h);
  h->thread_id = os::thread_id();
  // A new heap has nothing to purge for the budget events before it: without this, every
  // thread started after the first one would force a purge of every free chunk and heap.
  h->purge_epoch = g_purge_epoch.load(std::memory_order_relaxed);
  h->live = true;
  return h;
}

// A heap's run bins (runs_bins) are cleared only where runs are on: a heap's memory is zero when
// carved, and otherwise the bins' bytes, past the heap's second OS page for some heaps of a batch,
// are never touched.
inline size_t heap_bytes() { return sizeof(Heap) + (g_runs ? sizeof(RunBins) : 0); }

void heap_reset(Heap* h) {
  Heap* keep_next = h->next_heap;
  memset(static_cast<void*>(h), 0, heap_bytes());
  h->next_heap = keep_next;
  for (auto& d : h->direct) d = &g_empty_page;
  for (auto& d : h->direct2) d = &g_empty_page;
  class_blocks_reset(h);
}

size_t fcache_map_size() { return align_up(sizeof(ForeignCache), os::page_size()); }

void heap_to_pool(Heap* h) {
  LockGuard guard(g_heaps_lock);
  h->live = false;
  if (h->fc != nullptr) {  // empty by now (fcache_flush_all); stats walk heaps under this lock
    os::release(h->fc, fcache_map_size());
    h->fc = nullptr;
    h->fc_on = false;
  }
  // Keep the counters of exited threads in the totals.
  HeapStats& r = g_retired_stats;
  for (int i = 0; i < 4; ++i) {
    r.pages_made[i] += h->stats.pages_made[i];
    r.pages_freed[i] += h->stats.pages_freed[i];
  }
  r.large_allocs += h->stats.large_allocs;
  r.huge_allocs += h->stats.huge_allocs;
  r.generic_calls += h->stats.generic_calls;
  r.remote_frees += h->stats.remote_frees;
  r.segments_reclaimed += h->stats.segments_reclaimed;
  Heap* keep_next = h->next_heap;
  memset(static_cast<void*>(h), 0, heap_bytes());
  h->next_heap = keep_next;
  h->full.first = reinterpret_cast<Page*>(g_pool);
  g_pool = h;
}

// Every page of every segment of the heap, including large pages. fn returns true when it
// freed the segment (its last page), which ends the walk of that segment.
// Only the slices in spans are read (the free-slice bitmap, taken before the walk: fn may free
// the page it is given, never one ahead of it). Reading all 64 descriptors read 16 KiB of
// header per segment, a cache miss per descriptor, and in a new process three read faults on
// header pages that only the descriptors of slices never used live on.
template <class Fn>
bool for_each_page_of(Segment* s, Fn& fn) {
  uint64_t in_spans = ~s->free_slices & ~uint64_t{1};
  while (in_spans != 0) {
    const unsigned i = ctz64(in_spans);
    Page* p = &s->pages[i];
    // never stuck, even on a torn descriptor
    const unsigned n = p->kind == PageKind::kNone || p->slice_count == 0 ? 1u : p->slice_count;
    in_spans &= n >= kSlicesPerSegment - i ? 0 : ~uint64_t{0} << (i + n);
    if (p->kind != PageKind::kNone && fn(s, p)) return true;
  }
  return false;
}

template <class Fn>
void for_each_page(Heap* heap, Fn fn) {
  Segment* s = heap->segments;
  while (s != nullptr) {
    Segment* next_s = s->next;
    for_each_page_of(s, fn);
    s = next_s;
  }
}

}  // namespace

// The empty heap: every direct entry points at g_empty_page (whose free list is empty). It is
// built at compile time, so the first malloc of any thread, even before our constructors ran,
// takes the slow path without a check of its own on the fast path.
constinit Heap g_empty_heap{&g_empty_page};
uintptr_t g_free_key = 0x9e3779b97f4a7c15u;  // replaced by a random value at engine_init
bool g_secure = false;
bool g_runs = false;
bool g_zero_on_free = false;

bool fault_injection_set(const char* spec) noexcept {
  auto starts = [&](const char* w) {
    size_t i = 0;
    for (; w[i]; ++i)
      if (spec[i] != w[i]) return size_t{0};
    return i;
  };
  auto number = [](const char*& s, uint64_t* out) {
    if (*s < '0' || *s > '9') return false;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
      if (v > UINT64_MAX / 10 - 9) return false;
      v = v * 10 + static_cast<uint64_t>(*s++ - '0');
    }
    *out = v;
    return true;
  };
  if (spec == nullptr) return false;
  size_t k;
  os::FaultMode mode;
  if ((k = starts("off")) && spec[k] == 0) {
    os::set_fault_injection(os::FaultMode::kOff, 0, 0);
    return true;
  }
  if ((k = starts("nth:"))) mode = os::FaultMode::kNth;
  else if ((k = starts("every:"))) mode = os::FaultMode::kEvery;
  else if ((k = starts("random:"))) mode = os::FaultMode::kRandom;
  else return false;
  const char* s = spec + k;
  uint64_t n = 0, seed = 0x2545f4914f6cdd1dull;
  if (!number(s, &n) || n == 0) return false;
  if (*s == ':' && mode == os::FaultMode::kRandom) {
    ++s;
    if (!number(s, &seed)) return false;
  }
  if (*s != 0) return false;
  os::set_fault_injection(mode, n, seed);
  return true;
}

NEBULA_SMALL void engine_init() noexcept {
  int expected = 0;
  if (!g_init_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
  uintptr_t key = static_cast<uintptr_t>(os::random_u64());
  if (key != 0) g_free_key = key;
  options_init();
  g_secure = option_bool(Option::kSecure);
  g_runs = !g_secure && option_bool(Option::kMediumRuns);
  g_zero_on_free = g_secure && option_bool(Option::kZeroOnFree);
  if (option_bool(Option::kStats)) os::keep_stderr();  // the summary is printed at exit
  budget_init();
  const char* fault = option_text(Option::kFaultInject);
  if (!(fault[0] == 'o' && fault[1] == 'f' && fault[2] == 'f' && fault[3] == 0) && !fault_injection_set(fault)) {
    Message m;
    m.str("nebula-memory: bad value '").str(fault).str("' for option fault_inject; keeping the default off\n");
    m.emit();
  }
  os::install_thread_exit_hook(thread_done);
  os::on_fork(fork_prepare, fork_parent, fork_child);
  g_init_state.store(2, std::memory_order_release);
  if (option_bool(Option::kVerbose)) {
    Message m;
    m.str("nebula-memory: active (version 0.1.0)\n").emit();
    options_print();
  }
}

std::atomic<uint32_t> g_purge_epoch{0};  // see engine.hpp

Heap* heap_init_thread() noexcept {
  engine_init();
  Heap* h = heap_from_pool();
  if (h == nullptr) return nullptr;
  t_heap = h;
  os::arm_thread_exit_hook(h);
  return h;
}

// ---- Delayed frees ------------------------------------------------------------------------
void heap_delayed_free_all(Heap* heap) noexcept {
  Block* b = heap->delayed_free.exchange(nullptr, std::memory_order_acquire);
  while (b != nullptr) {
    Block* next = link_get(b);
    Segment* s = segment_of(b);
    Page* page = page_of(s, b);
    // Wait until the thread that announced the block has finished with the page's state.
    while ((page->thread_free.load(std::memory_order_acquire) & kDelayMask) == kDelayFreeing) os::yield();
    free_block_local(page, b);
    b = next;
  }
}

// ---- Maintenance --------------------------------------------------------------------------
// Free empty pages, purge expired free slices of our segments and of the arenas, and adopt
// abandoned segments. `force`: everything now (malloc_trim, thread exit).
void heap_collect(Heap* heap, bool force) noexcept {
  if (force) fcache_flush_all(heap);
  heap_delayed_free_all(heap);
  spare_flush(heap);  // (after the delayed frees, which may empty pages into spares)
  for_each_page(heap, [&](Segment*, Page* p) {
    if (p->kind == PageKind::kLarge) return false;
    if (p->kind == PageKind::kRuns) {
      runs_collect(p);
      if (p->used == 0 && (force || !(heap->runs.first == p && p->next == nullptr))) return page_free(heap, p);
      return false;
    }
    page_collect(p);
    if (p->used == 0) {
      PageQueue* q = &heap->queues[p->size_class];
      if (force || !(q->first == p && p->next == nullptr)) return page_free(heap, p);
    } else if ((page_flags(p) & kPageInFull) && p->free != nullptr) {
      page_unfull(heap, p);
    }
    return false;
  });
}

PunchFeedback g_punch_feedback;

// The heap grew into memory that was not resident (span_alloc counted it in punch_want). As
// much of what its sparse pages hold free goes back now rather than after the delay: a program
// whose objects changed size (new classes growing while the pages of the old ones hold a few
// survivors each) does not grow by the memory it freed. At most every 8 ms (a heap that grows
// steadily has no sparse pages to look for), for the growth since. Called once the allocation
// is done, so that the page it came from is its class's first page, which is left alone.
void heap_grew(Heap* heap) noexcept {
  // Inside the 8 ms the clock is read once every 32 calls: a heap whose pages come and go
  // (glibc-simple: 100,000 pages made in 0.1 s) called clock_gettime on half its slow paths.
  if (heap->punch_skip != 0) {
    heap->punch_skip--;
    return;
  }
  uint64_t now = os::clock_ms();
  if (now < heap->next_punch_ms) {
    heap->punch_skip = 32;
    return;
  }
  heap->next_punch_ms = now + 8;
  size_t want = heap->punch_want;
  heap->punch_want = 0;
  heap_punch_sparse(heap, now, want);
}

// Pages of at most an eighth live blocks with at least an OS page of free ones, sparse for four
// purge delays (or at once, when `want` bytes are asked for), give the memory of their free
// blocks back (page_punch). The page allocation happens in is left alone, unless it is empty:
// see below.
size_t heap_punch_sparse(Heap* heap, uint64_t now, size_t want) noexcept {
  const bool force = want != 0;
  // Secure mode makes no holes: a pass for growth has nothing to do there. A pass that wants
  // everything (a wait, malloc_trim, a thread's exit) still frees the pages that only other
  // threads freed into (below).
  if (g_secure && force && want != SIZE_MAX) return 0;
  size_t got = 0;
  const uint32_t delay = static_cast<uint32_t>(option(Option::kPurgeDelay));
  const uint32_t now32 = static_cast<uint32_t>(now) | 1u;
  const size_t ps = os::page_size();
  const bool growth = force && want != SIZE_MAX;
  if (growth) {
    // Not where what was given back for growth soon came back in page faults (more than half of
    // it taken again: a burst of frees that the next burst fills again left the pages sparse).
    // Both counts halve past 16 MiB, so the rule follows the program's recent behaviour.
    // Process-wide: threads that come and go inherit what the ones before them saw.
    size_t punched = g_punch_feedback.punched.load(std::memory_order_relaxed);
    size_t refilled = g_punch_feedback.refilled.load(std::memory_order_relaxed);
    if (punched > (size_t{16} << 20)) {
      g_punch_feedback.punched.store(punched / 2, std::memory_order_relaxed);
      g_punch_feedback.refilled.store(refilled / 2, std::memory_order_relaxed);
    }
    if (refilled * 2 > punched + (size_t{1} << 20)) {
      // Try again later: a growth that is asked to punch 100 times (about a second of steady
      // growth) brings the count down by a third.
      g_punch_feedback.refilled.store(refilled - refilled / 256, std::memory_order_relaxed);
      return 0;
    }
  }
  bool done = false;
  auto visit = [&](Segment*, Page* p) {
    if (got >= want && force) {
      done = true;
      return true;
    }
    if (p->kind == PageKind::kRuns) return runs_maintain(heap, p, now32, delay, want == SIZE_MAX);
    if ((p->kind != PageKind::kSmall && p->kind != PageKind::kMedium) ||
        (page_flags(p) & (kPageInFull | kPageSpare)) || p->capacity == 0)
      return false;
    PageQueue* pq = &heap->queues[p->size_class];
    // Every block the page still counts as used was freed by other threads (thread_free holds
    // them all): the owner collects a page's remote frees only when it allocates from it, which
    // it may never do again once the program's sizes have moved on. A server whose requests grew
    // from about 16 B to 128 KiB in 6 s, a quarter of its blocks freed by another thread, kept 3,700
    // such pages of 64 KiB holding 339 KiB of live blocks and 23 MiB of uncollected frees, and
    // reached 797 MiB where glibc held 268 and mimalloc 392. Found so at two passes a purge
    // delay apart with its class quiet in between (no slow-path allocation, its first page's
    // next block the same, no foreign cache), the page takes its frees and gives their memory
    // back (page_punch: every block a hole, carved again if the class comes back; the class's
    // last page goes, below). Freeing such pages instead gave back as much, but their slices,
    // scattered among live pages, fed the purges that make room for large blocks: `patterns
    // size-drift` then purged 6.0 GiB instead of 1.7 and took 3.6 times the page faults. A class
    // in use keeps such pages for its owner to come back to (with the slow-path count alone,
    // `larson`, whose pages of 4,096 blocks serve it for seconds from the fast path, took 24%
    // more page faults), and pages with live blocks are left to it: collecting those here too
    // changed which pages `xmalloc`'s producer carves (peak RSS +5%). A thread about to wait on
    // a condition variable (want == SIZE_MAX) waits for nothing: its classes stay quiet while it
    // blocks (a producer whose consumers freed its 400,000 blocks: 234 MiB resident through its
    // wait, 18 MiB now; the wait's backoff counts these pages' refills as its own).
    if (const uintptr_t tf = p->thread_free.load(std::memory_order_relaxed); tf_block(tf) != nullptr && tf_count(tf) == p->used) {
      const unsigned cls = p->size_class;
      if (heap->fc_active & (uint64_t{1} << cls)) return false;
      const uint16_t tick = heap->class_ticks[cls];
      const Block* head = pq->first->free;
      if (want != SIZE_MAX && (p->sparse_since == 0 || p->idle_tick != tick || p->idle_head != head)) {
        p->sparse_since = now32;
        p->idle_tick = tick;
        p->idle_head = head;
        if (delay != 0) return false;
      }
      if (want != SIZE_MAX && now32 - p->sparse_since < delay) return false;
      page_collect(p);  // used is 0 now
      if (!(pq->first == p && p->next == nullptr)) {
        if (g_secure) return page_release(heap, p);  // secure mode makes no holes: it goes
        got += page_punch(p);
        return false;
      }
    }
    const uint32_t cap = p->capacity, used = p->used;
    if (used == 0 && pq->first == p && p->next == nullptr) {
      // A class's last page, kept empty when its last block was freed (page_retire) for a loop
      // that allocates and frees a block at a time. Empty at two passes a purge delay apart, the
      // class has gone quiet (a program's phase, a string grown out of the small classes): the
      // page goes, and its slices are purged after the delay unless a page takes them first.
      // (Wrong about a class that empties and refills between the passes, this costs a page
      // made again once per purge delay.) `strbuild`: 40 such pages, 1.5 MiB, stayed to the end.
      // A heap that grew into memory that was not resident lets it go at once: its slices,
      // resident, serve the next pages of the growing class instead of fresh memory.
      // `glibc-simple` (a class at a time, 1,600 blocks, all freed): the pages of the four
      // classes before its blocks of 4 KiB held 220 KiB at its peak.
      if (growth) return page_free(heap, p);
      if (p->sparse_since == 0) {
        p->sparse_since = now32;
        return false;
      }
      if (now32 - p->sparse_since < delay) return false;
      return page_free(heap, p);
    }
    if (g_secure) return false;
    const uint32_t spare = cap - used - p->holes;
    const uint32_t per_os_page = p->block_size >= ps ? 1u : static_cast<uint32_t>(ps / p->block_size);
    if (used * 8 > cap || spare < per_os_page || pq->first == p) {
      p->sparse_since = 0;
      return false;
    }
    if (p->sparse_since == 0) {
      p->sparse_since = now32;
      p->punch_used = UINT16_MAX;
      if (!force) return false;
    }
    if (!force && now32 - p->sparse_since < 4 * delay) return false;
    // Again only once three quarters of the blocks live then have died: the OS pages that hold
    // only free blocks grow fast as a page empties (blocks of 256 bytes: at a tenth of them
    // live, a tenth of the page's memory; at a fortieth, two thirds), and each pass reads the
    // page's whole free list.
    if (p->punch_used != UINT16_MAX && used * 4 > p->punch_used) return false;
    // Nor when it would find nothing: with blocks freed at random, an OS page touched by n
    // blocks holds only free ones with probability (free share)^n.
    double q = 1.0 - static_cast<double>(used) / cap, all_free = 1.0;
    for (uint32_t i = 0; i <= per_os_page && all_free * (cap * p->block_size / ps) >= 1.0; ++i) all_free *= q;
    if (all_free * static_cast<double>(cap * p->block_size / ps) < 1.0) return false;
    size_t b = page_punch(p);
    got += b;
    if (growth && b != 0) {
      g_punch_feedback.punched.fetch_add(b, std::memory_order_relaxed);
      p->punched_for_growth = 1;
    }
    p->punch_used = static_cast<uint16_t>(used);
    return false;
  };
  if (want == SIZE_MAX) {  // everything now (a wait, malloc_trim, a thread's exit)
    for_each_page(heap, visit);
    return got;
  }
  // The periodic passes (maintenance, growth) read at most kPunchScanSegments segments each,
  // from where the last one stopped: every pass read every page descriptor of the heap, two
  // lines each, and a heap growing to 4 GiB of small blocks spent 14% of its time here (a pass
  // every 8 ms over all the pages made so far). A heap of up to 128 MiB is read whole each time,
  // as before; a bigger one in turns, all of it within 32 passes (about 2 s of maintenance).
  unsigned left = heap->segment_count < kPunchScanSegments ? heap->segment_count : kPunchScanSegments;
  Segment* s = heap->punch_next != nullptr ? heap->punch_next : heap->segments;
  for (; s != nullptr && left != 0 && !done; --left) {
    Segment* next = s->next;  // (s may go: its last page freed)
    for_each_page_of(s, visit);
    s = next != nullptr ? next : heap->segments;
  }
  heap->punch_next = s;
  return got;
}

// Purge the heap's free slices whose purge time has come (all with `force`) and note the
// earliest purge time left. The caller holds the heap's segment lock.
static void heap_purge_segments(Heap* heap, uint64_t now, bool force) {
  uint64_t due = 0;
  for (Segment* s = heap->segments; s != nullptr; s = s->next) {
    segment_purge(s, now, force);
    if (s->purge_at_ms != 0 && (due == 0 || s->purge_at_ms < due)) due = s->purge_at_ms;
  }
  heap->purge_due_ms.store(due, std::memory_order_relaxed);
}

// A thread that has stopped allocating (blocked on a condition variable, or busy in code that
// does not allocate) never runs its own maintenance: the free slices its heap holds would stay
// resident for as long as it stays quiet. So the other threads' maintenance purges them once
// their purge time has passed by a further purge delay, which an owner that still allocates
// would have acted on. It takes the heap's segment lock only if it is free (an owner at work
// holds it), at most once per purge delay in the whole process, and under the heaps lock, so
// that no heap is recycled or abandoned meanwhile.
std::atomic<uint64_t> g_purge_idle_next_ms{0};

void heaps_purge_idle(Heap* me, uint64_t now, bool force, bool try_lock) noexcept {
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  uint64_t t = g_purge_idle_next_ms.load(std::memory_order_relaxed);
  if (!force && (now < t || !g_purge_idle_next_ms.compare_exchange_strong(t, now + delay, std::memory_order_relaxed)))
    return;
  if (try_lock) {
    if (!g_heaps_lock.try_lock()) return;
  } else {
    g_heaps_lock.lock();
  }
  for (Heap* h = g_all_heaps; h != nullptr; h = h->next_heap) {
    if (h == me || !h->live) continue;
    uint64_t due = h->purge_due_ms.load(std::memory_order_relaxed);
    if (due == 0 || (!force && now < due + delay)) continue;
    if (!h->seg_lock.try_lock()) continue;
    heap_purge_segments(h, now, force);
    h->seg_lock.unlock();
  }
  g_heaps_lock.unlock();
}

// The free memory whose purge time has come: this heap's free slices, the other heaps' that are
// overdue (heaps_purge_idle) and the arena's free chunks, each only if its lock is free. Safe
// wherever the thread holds no allocator lock, a signal handler included (poll and nanosleep
// may be called from one, in the middle of the thread's own malloc): it changes only what the
// other threads' purges change, free slices and chunks under their locks, never a page's lists.
// At most once per quarter purge delay per thread (t_due_check_ms; the maintenance's pace): the
// calls come thousands of times a second in a busy server, and each check reads shared lines.
static __thread uint64_t t_due_check_ms __attribute__((tls_model("initial-exec")));

void heap_purge_due(Heap* heap, uint64_t now) noexcept {
  if (now < t_due_check_ms) return;
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  t_due_check_ms = now + (delay / 4 > 0 ? delay / 4 : 1);
  const int saved = errno;
  if (heap->live) {
    const uint64_t due = heap->purge_due_ms.load(std::memory_order_relaxed);
    if (due != 0 && now >= due && heap->seg_lock.try_lock()) {
      heap_purge_segments(heap, now, false);
      heap->seg_lock.unlock();
    }
  }
  heaps_purge_idle(heap, now, false, true);
  arena_purge_try(now);
  errno = saved;
}

void heap_maintenance(Heap* heap, bool force) noexcept {
  uint64_t now = os::clock_ms();
  if (now >= heap->next_punch_ms) heap->punch_skip = 0;  // a later growth is punched at once
  // A heap that let go of most of its memory runs its pass now rather than up to a quarter of
  // the purge delay later: the program's next phase grows meanwhile (clang++ freed 77 MiB of its
  // 120 at once and reached its peak 40 ms later, 1 MiB higher). At most one such early pass per
  // interval: a loop that frees all it built and builds it again (`glibc-simple`) lets go of
  // most at every round, and a purge at each one cost it 40 times the page faults.
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  const uint64_t interval = delay / 4 > 0 ? delay / 4 : 1;
  if (!force && now < heap->next_maintenance_ms) {
    // (early_pass_ms 0: none yet. The monotonic clock starts near 0 at boot: read as a pass at
    // time 0, it held off a heap's first early pass for the machine's first interval, which the
    // unit test's purge delay of an hour made 15 minutes.)
    if ((heap->early_pass_ms != 0 && now < heap->early_pass_ms + interval) || !heap_let_go_of_most(heap)) return;
    heap->early_pass_ms = now;
  }
  // Spare pages that no page took since the last pass go back to their segments (their slices
  // are purged after the delay, like any): a phase that ended does not keep them.
  if (heap->spare != nullptr && heap->spare_taken == heap->spare_taken_mark) spare_flush(heap);
  heap->spare_taken_mark = heap->spare_taken;
  fcache_flush_idle(heap);  // likewise the class caches that handed out nothing
  if (force) heap_collect(heap, true);
  {
    HeapSegGuard guard(heap);
    heap_purge_segments(heap, now, force);
    if (!force) heap_purge_excess(heap);
  }
  heaps_purge_idle(heap, now, force);
  abandoned_purge_kept(now, force);
  arena_purge(force);
  heap_punch_sparse(heap, now, force ? SIZE_MAX : 0);
  heap->next_maintenance_ms = now + interval;
}

NEBULA_COLD void* alloc_failed(Heap* heap, size_t n, bool zero);
NEBULA_COLD void* alloc_failed_in_class(Heap* heap, size_t n, bool zero);

namespace {
// Shared body of the generic allocation paths.
NEBULA_HOT void* generic_body(Heap* heap, size_t n, bool zero, bool runs = true) {
  if (NEBULA_UNLIKELY(!heap->live)) {
    heap = heap_init_thread();
    if (heap == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
  }
  if (heap->delayed_free.load(std::memory_order_relaxed) != nullptr) heap_delayed_free_all(heap);
  heap->stats.generic_calls++;
  if (NEBULA_UNLIKELY(++heap->ticks >= 64)) {
    heap->ticks = 0;
    // The foreign cache pays where this thread frees other threads' blocks often: it goes on
    // above 4 such frees per slow-path allocation over the last 64 (a server passing requests
    // between threads) and off below 1. Where they are rare, a cached block would move into the
    // thread's working set and make every later free of it a remote one (reading the owner's
    // page descriptor); while it is on, its own draining adds slow-path calls (hence the gap).
    uint64_t remote = heap->stats.remote_frees - heap->fc_remote_mark;
    if (remote > 4 * 64) heap->fc_on = fcache_ready(heap);
    else if (remote < 64) heap->fc_on = false;
    heap->fc_remote_mark = heap->stats.remote_frees;
    heap_maintenance(heap, false);
  }
  if (NEBULA_UNLIKELY(heap->purge_epoch != g_purge_epoch.load(std::memory_order_relaxed))) {
    heap->purge_epoch = g_purge_epoch.load(std::memory_order_relaxed);
    heap_maintenance(heap, true);
  }
  void* p;
  if (n > kRunsMin && n <= kRunsMax && g_runs && runs) {
    p = runs_alloc(heap, n, zero);
  } else if (n <= kMediumMax) {
    p = queue_alloc(heap, size_to_class(n), zero, n);
  } else if (n <= kLargeMax) {
    p = large_alloc(heap, n, 0, zero);
  } else if (n <= kMaxRequest) {
    heap->stats.huge_allocs++;
    heap_maintain_huge();
    p = huge_alloc(n, 0, zero);
  } else {
    errno = ENOMEM;
    return nullptr;
  }
  if (NEBULA_UNLIKELY(p == nullptr)) return runs ? alloc_failed(heap, n, zero) : alloc_failed_in_class(heap, n, zero);
  if (NEBULA_UNLIKELY(heap->punch_want != 0)) heap_grew(heap);
  budget_poll_if_needed();
  return p;
}
}  // namespace

// (n, heap): the fast path's argument stays in its register on the way here.
void* alloc_generic(size_t n, Heap* heap) noexcept { return generic_body(heap, n, false); }
void* alloc_zero_generic(size_t n, Heap* heap) noexcept { return generic_body(heap, n, true); }
void* alloc_in_class(size_t n, bool zero) noexcept { return generic_body(t_heap, n, zero, false); }

// The OS or the budget refused memory: purge what we cache (and ask the other heaps to), tell
// the pressure callbacks (level critical; they may free), retry; only then fail with ENOMEM, or
// abort if NEBULA_MEM_ON_OOM=abort.
void* oom_retry(Heap* heap, size_t n, void* (*attempt)(Heap*, size_t, size_t, bool), size_t align, bool zero) {
  g_purge_epoch.fetch_add(1, std::memory_order_relaxed);
  heaps_collect_abandoned(true);
  void* p = attempt(heap, n, align, zero);
  if (p == nullptr) {
    budget_critical(n);
    heap_maintenance(heap, true);
    p = attempt(heap, n, align, zero);
  }
  budget_poll_if_needed();
  if (p != nullptr) return p;
  errno = ENOMEM;
  if (t_shrink_copy) return nullptr;  // realloc keeps the block instead: nothing failed
  g_budget.failures.fetch_add(1, std::memory_order_relaxed);
  if (option(Option::kOnOom) == 1) budget_abort(n);
  return nullptr;
}

namespace {
void* attempt_in_class(Heap* heap, size_t n, size_t, bool zero) { return queue_alloc(heap, size_to_class(n), zero, n); }
void* attempt_plain(Heap* heap, size_t n, size_t, bool zero) {
  if (n > kRunsMin && n <= kRunsMax && g_runs) return runs_alloc(heap, n, zero);
  if (n <= kMediumMax) return queue_alloc(heap, size_to_class(n), zero, n);
  if (n <= kLargeMax) return large_alloc(heap, n, 0, zero);
  return huge_alloc(n, 0, zero);
}
}  // namespace

void* alloc_failed(Heap* heap, size_t n, bool zero) { return oom_retry(heap, n, attempt_plain, 0, zero); }
void* alloc_failed_in_class(Heap* heap, size_t n, bool zero) { return oom_retry(heap, n, attempt_in_class, 0, zero); }

// ---- Free ---------------------------------------------------------------------------------
Block* block_start(Segment* s, Page* page, void* p) noexcept {
  if (NEBULA_LIKELY(!(page_flags(page) & kPageHasAligned))) return static_cast<Block*>(p);
  uint8_t* start = page_start(s, page);
  if (page->kind == PageKind::kLarge) return reinterpret_cast<Block*>(start);
  size_t off = static_cast<size_t>(static_cast<uint8_t*>(p) - start);
  return reinterpret_cast<Block*>(start + off / page->block_size * page->block_size);
}

void free_block_local(Page* page, Block* b) noexcept {
  link_set_in(page, b, page->local_free);
  page->local_free = b;
  page->used--;
  if (page->kind == PageKind::kLarge) {
    if (page->used == 0) span_free(segment_of(page), page);
    return;
  }
  Heap* heap = segment_of(page)->owner_heap.load(std::memory_order_relaxed);
  if (page_flags(page) & kPageInFull) page_unfull(heap, page);
  if (page->used == 0) page_retire(page);
}

void free_block_remote(Page* page, Block* b) noexcept {
  uintptr_t old = page->thread_free.load(std::memory_order_relaxed);
  uintptr_t st;
  for (;;) {
    st = old & kDelayMask;
    uintptr_t nv;
    if (st == kDelayUse) {
      nv = (old & ~kDelayMask) | kDelayFreeing;
    } else if (st == kDelayFreeing) {
      os::yield();
      old = page->thread_free.load(std::memory_order_relaxed);
      continue;
    } else {
      link_set(b, tf_block(old));
      nv = (static_cast<uintptr_t>(tf_count(old) + 1) << kTfCountShift) | reinterpret_cast<uintptr_t>(b) | st;
    }
    if (page->thread_free.compare_exchange_weak(old, nv, std::memory_order_acq_rel, std::memory_order_relaxed)) break;
  }
  if (st != kDelayUse) return;
  // The page is full: tell its owner through the heap's delayed list, so that it takes the
  // page out of the full list. While the state is kDelayFreeing the heap cannot go away.
  Heap* heap = segment_of(page)->owner_heap.load(std::memory_order_acquire);
  Block* head = heap->delayed_free.load(std::memory_order_relaxed);
  do {
    link_set(b, head);
  } while (!heap->delayed_free.compare_exchange_weak(head, b, std::memory_order_release, std::memory_order_relaxed));
  old = page->thread_free.load(std::memory_order_relaxed);
  while (!page->thread_free.compare_exchange_weak(old, (old & ~kDelayMask) | kDelayNone,
                                                  std::memory_order_release, std::memory_order_relaxed)) {
  }
}

// ---- The foreign cache (Heap::fc_*) ---------------------------------------------------------
// A block freed by a thread other than its page's owner goes to that thread's cache of its class
// (up to fc_limit blocks, about 16 KiB) instead of to its page; the thread's next allocations of
// the class take it back, from its own cache. Blocks of 16 bytes are not cached: a cached block
// carries a mark in its third word (see in_foreign_cache).
namespace {
inline uint32_t fc_limit(unsigned cls) { return kFcLimit[cls]; }
// The limit of heap's cache of class cls (Heap::fc_limit).
inline uint32_t fc_limit(const Heap* heap, unsigned cls) { return heap->fc_limit[cls]; }
}  // namespace

// A free block in some thread's foreign cache carries the free key and, in its third word, the
// complement of the key. Free blocks elsewhere are on lists the owner can search.
bool in_foreign_cache(const Page* page, const Block* b) noexcept {
  return page->block_size >= 32 && reinterpret_cast<const uintptr_t*>(b)[2] == ~g_free_key;
}

std::atomic<bool> g_fcache_ever{false};

// The foreign cache's descriptors, mapped the first time the heap turns its cache on (fresh
// memory is zero: every list empty). False if the OS refuses: the cache stays off.
static bool fcache_map(Heap* heap) noexcept {
  if (heap->fc != nullptr) return true;
  void* m = os::reserve(fcache_map_size(), os::page_size());
  if (m == nullptr) return false;
  __atomic_store_n(&heap->fc, static_cast<ForeignCache*>(m), __ATOMIC_RELEASE);  // stats read it
  return true;
}

bool fcache_ready(Heap* heap) noexcept {
  // Written once: every later call only reads the flag's line, which realloc reads too.
  if (!g_fcache_ever.load(std::memory_order_relaxed)) g_fcache_ever.store(true, std::memory_order_relaxed);
  return fcache_map(heap);
}

uint32_t fcache_limit(unsigned cls) noexcept { return fc_limit(cls); }

uint32_t fcache_limit_of(const Heap* heap, unsigned cls) noexcept { return fc_limit(heap, cls); }

uint32_t fcache_direct_min(unsigned cls) noexcept { return fc_limit(cls) / 2 > 1 ? fc_limit(cls) / 2 : 1; }

uint32_t fcache_held(const Heap* heap, unsigned cls) noexcept {
  return heap->fc != nullptr ? heap->fc->pushed[cls] - heap->fc->page[cls].used : 0;
}

// Send the cached blocks of class cls back to their pages, but for the `keep` freed last (the
// owner's own blocks as its frees, the others as remote frees).
void fcache_flush(Heap* heap, unsigned cls, uint32_t keep) noexcept {
  Page* fp = &heap->fc->page[cls];
  uint32_t held = fcache_held(heap, cls);
  if (keep > held) keep = held;
  Block* b = fp->free;
  Block* last_kept = nullptr;
  for (uint32_t i = 0; i < keep; ++i) {
    last_kept = b;
    b = b->next;
  }
  if (last_kept != nullptr) last_kept->next = nullptr;
  else fp->free = nullptr;
  for (uint32_t i = keep; i < held && b != nullptr; ++i) {
    Block* next = b->next;
    Segment* s = segment_of(b);
    if (s->thread_id.load(std::memory_order_relaxed) == os::thread_id()) free_block_local(page_of(s, b), b);
    else free_block_remote(page_of(s, b), b);
    b = next;
  }
  heap->fc->pushed[cls] = keep;
  fp->used = 0;
}

namespace {
void fcache_flush_class(Heap* heap, unsigned cls) noexcept {
  fcache_flush(heap, cls, 0);
  heap->fc_active &= ~(uint64_t{1} << cls);
  if (heap->fc_direct & (uint64_t{1} << cls)) {
    heap->fc_direct &= ~(uint64_t{1} << cls);
    heap_update_direct(heap, cls);
  }
}

}  // namespace

// A class's cache that handed out no block since the last maintenance pass goes home: the
// blocks pin their pages (up to 16 of them per class), and a program whose blocks outgrew the
// class (a string that grows by realloc) would keep them. The caches of other threads' blocks
// too (since stop 42): the pages they pin are their owners', which cannot let them go (the
// server whose sizes drifted, heap_punch_sparse: 649 MiB at its peak with only the owner's
// class caches flushed, 417 with all).
void fcache_flush_idle(Heap* heap) noexcept {
  if (heap->fc == nullptr) return;
  for (uint64_t m = heap->fc_active; m != 0; m &= m - 1) {
    unsigned cls = ctz64(m);
    if (heap->fc->page[cls].used == heap->fc->popped_mark[cls]) fcache_flush_class(heap, cls);
  }
  for (unsigned cls = 0; cls < kClassCount; ++cls) heap->fc->popped_mark[cls] = heap->fc->page[cls].used;
}

void fcache_flush_all(Heap* heap) noexcept {
  for (uint64_t m = heap->fc_active; m != 0; m &= m - 1) {  // a class holds blocks only while active
    fcache_flush_class(heap, ctz64(m));
  }
}

namespace {

// A free block goes to heap me's cache of its class (see fcache_push and free_generic).
NEBULA_NOINLINE void cache_put_full(Heap* me, unsigned cls, Block* b);
NEBULA_NOINLINE void cache_direct_on(Heap* me, unsigned cls) {
  me->fc_direct |= uint64_t{1} << cls;
  heap_update_direct(me, cls);
}

// Push b on the cache, which holds `held` blocks, fewer than its limit.
inline void cache_push(Heap* me, ForeignCache* fc, unsigned cls, Block* b, uint32_t held) {
  Page* fp = &fc->page[cls];
  reinterpret_cast<uintptr_t*>(b)[2] = ~g_free_key;
  b->next = fp->free;
  fp->free = b;
  fc->pushed[cls]++;
  uint64_t bit = uint64_t{1} << cls;
  me->fc_active |= bit;
  // The direct entries move to the cache once it holds half its limit, or when the class's page
  // runs out (queue_alloc), and back when the cache runs dry: moved at the first block, a class
  // whose cache emptied after every block or two paid two direct-table updates and a slow-path
  // call per cached block (`larson`: 1.6 M slow-path calls per 12 M allocations, now 0.4 M).
  if (!(me->fc_direct & bit) && held + 1 >= fcache_direct_min(cls)) cache_direct_on(me, cls);
}

inline void cache_put(Heap* me, unsigned cls, Block* b) {
  ForeignCache* fc = me->fc;
  uint32_t held = fc->pushed[cls] - fc->page[cls].used;
  if (NEBULA_UNLIKELY(held >= fc_limit(me, cls))) return cache_put_full(me, cls, b);
  cache_push(me, fc, cls, b, held);
}

void cache_put_full(Heap* me, unsigned cls, Block* b) {
  fcache_flush(me, cls, fc_limit(me, cls) / 2);
  cache_put(me, cls, b);
}

// Keep a block another thread's page owns, for this heap's next allocation of its class.
bool fcache_push(Heap* me, Page* page, Block* b) {
  unsigned cls = page->size_class;
  if (!me->fc_on || !me->live || page->kind == PageKind::kLarge || kClassSize[cls] < 32 || g_secure) return false;
  cache_put(me, cls, b);
  return true;
}

// Is b on one of the page's free lists? Only the owner may walk free and local_free; anyone
// may walk thread_free (pushers only prepend) and the owner heap's delayed list.
bool block_is_free(Segment* s, Page* page, Block* b, bool owner) {
  if (block_is_hole(s, page, b)) return true;
  size_t limit = static_cast<size_t>(page->capacity) + 1;
  auto on = [&](Block* l) {
    for (size_t i = 0; l != nullptr && i < limit; ++i, l = link_get(l))
      if (l == b) return true;
    return false;
  };
  if (on(tf_block(page->thread_free.load(std::memory_order_acquire)))) return true;
  if (!owner) return false;
  if (on(page->free) || on(page->local_free)) return true;
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  return heap != nullptr && on(heap->delayed_free.load(std::memory_order_acquire));
}

[[noreturn]] NEBULA_COLD void interior_pointer(Segment* s, Page* page, void* p) {
  Message m;
  uint8_t* start = page_start(s, page);
  size_t off = static_cast<size_t>(static_cast<uint8_t*>(p) - start);
  uint8_t* block = start + off / page->block_size * page->block_size;
  m.str("pointer into the middle of a ").num(page->block_size).str("-byte block at ")
      .hex(reinterpret_cast<uintptr_t>(block)).str(", not its start");
  // Message is a fixed buffer: copy it for fatal_pointer's own message.
  static char what[160];
  size_t n = m.size() < sizeof what - 1 ? m.size() : sizeof what - 1;
  for (size_t i = 0; i < n; ++i) what[i] = m.data()[i];
  what[n] = 0;
  fatal_pointer("free", p, what);
}

}  // namespace

bool block_is_free_any(Segment* s, Page* page, Block* b) noexcept {
  return block_is_free(s, page, b, s->thread_id.load(std::memory_order_relaxed) == os::thread_id()) ||
         in_foreign_cache(page, b);
}

namespace {

NEBULA_NOINLINE void free_checked(Segment* s, Page* page, void* p) noexcept {
  if (s->kind == SegmentKind::kHuge) {
    Page* hp = &s->pages[1];
    if (reinterpret_cast<uintptr_t>(p) != s->huge_start)
      fatal_pointer("free", p, "pointer into the middle of a huge block, not its start");
    huge_free(s, hp);
    heap_maintain_huge();
    budget_poll_if_needed();
    return;
  }
  const uint8_t flags = page_flags(page);
  // One test for the three flags that send a free elsewhere (the common path pays for one).
  if (NEBULA_UNLIKELY(flags & (kPageNotInUse | kPageSpare | kPageRuns))) {
    if (flags & kPageNotInUse) invalid_pointer("free", p);
    if (flags & kPageSpare) fatal_pointer("free", p, "double free (the block is free already)");
    runs_free(s, page, p, s->thread_id.load(std::memory_order_relaxed) == os::thread_id());
    budget_poll_if_needed();
    return;
  }
  bool owner = s->thread_id.load(std::memory_order_relaxed) == os::thread_id();
  Block* b = block_start(s, page, p);
  if (page->kind != PageKind::kLarge) {
    if (NEBULA_UNLIKELY(!(flags & kPageHasAligned) && !is_block_start(page, p))) interior_pointer(s, page, p);
    if (NEBULA_UNLIKELY(g_secure)) {
      // Exact: the block's live bit says whether it is allocated.
      size_t i = block_index(s, page, b);
      uint64_t* bits = live_bits(s, page);
      uint64_t bit = uint64_t{1} << (i % 64);
      uint64_t old = __atomic_fetch_and(&bits[i / 64], ~bit, __ATOMIC_ACQ_REL);
      if (!(old & bit)) fatal_pointer("free", p, "double free (the block is free already)");
      if (g_zero_on_free) memset(b, 0, page->block_size);
    } else if (NEBULA_UNLIKELY(flags & kPageHoles) && block_is_hole(s, page, b)) {
      fatal_pointer("free", p, "double free (the block is free already)");
    } else if (NEBULA_UNLIKELY(b->key == g_free_key) &&
               (block_is_free(s, page, b, owner) || in_foreign_cache(page, b))) {
      fatal_pointer("free", p, "double free (the block is free already)");
    }
    b->key = g_free_key;
  }
  if (owner) {
    free_block_local(page, b);
  } else {
    Heap* me = t_heap;
    if (me->live) me->stats.remote_frees++;
    else g_counters.remote_frees_no_heap.fetch_add(1, std::memory_order_relaxed);  // (a consumer thread)
    if (!fcache_push(me, page, b)) free_block_remote(page, b);
  }
  budget_poll_if_needed();
}

}  // namespace

namespace {
NEBULA_NOINLINE void free_generic_rest(Segment* s, Page* page, void* p) noexcept;

// A block of a class whose cache takes the owner's frees, into a full page (see below).
inline bool cacheable_free(Segment* s, Page* page) {
  return page_flags(page) == kPageInFull && (page->kind == PageKind::kSmall || page->kind == PageKind::kMedium) &&
         class_caches_frees(page->size_class) && s->kind != SegmentKind::kHuge;
}
// ... freed by its owner, at a block start, not free already, and not in a run of frees.
inline bool owner_may_cache(Segment* s, Page* page, void* p, const Heap* me) {
  return s->thread_id.load(std::memory_order_relaxed) == os::thread_id() && is_block_start(page, p) &&
         static_cast<Block*>(p)->key != g_free_key && !(me->cache_bulk & (uint64_t{1} << page->size_class));
}
}  // namespace

// The owner's free of a block of 4-32 KiB whose page is full (a page with no free block: the
// block would make it a page of one free block, requeued for one allocation) goes to the heap's
// cache of the class instead (see "Class caches" in docs/design.md). The common case, a cache
// that has room, is done here: with the rest of the work inline (a call on each of its paths)
// the function saved six registers on entry. 87 -> 76 instructions per such free (callgrind of
// `patterns mid-replace`); everything else goes on in free_generic_rest.
void free_generic(Segment* s, uintptr_t off, void* p) noexcept {
  Page* page = page_at(s, off);
  if (cacheable_free(s, page)) {
    Heap* me = t_heap;
    ForeignCache* fc = me->fc;
    Block* b = static_cast<Block*>(p);
    const unsigned cls = page->size_class;
    if (fc != nullptr && owner_may_cache(s, page, p, me)) {
      const uint32_t held = fc->pushed[cls] - fc->page[cls].used;
      if (held < fc_limit(me, cls)) {
        b->key = g_free_key;
        cache_push(me, fc, cls, b, held);
        return;
      }
    }
  }
  free_generic_rest(s, page, p);
}

namespace {
void free_generic_rest(Segment* s, Page* page, void* p) noexcept {
  if (cacheable_free(s, page)) {
    Heap* me = t_heap;
    Block* b = static_cast<Block*>(p);
    const unsigned cls = page->size_class;
    const uint64_t bit = uint64_t{1} << cls;
    if (owner_may_cache(s, page, p, me) && (me->fc != nullptr || (me->live && fcache_map(me)))) {
      if (fcache_held(me, cls) < fc_limit(me, cls)) {
        b->key = g_free_key;
        cache_put(me, cls, b);
        return;
      }
      // A run of frees longer than the cache holds (a program freeing what it built, not
      // replacing blocks): the cache goes home, so that its blocks do not keep their pages
      // alive after the run, and the class's frees go to their pages until its next
      // slow-path allocation.
      fcache_flush_class(me, cls);
      me->cache_bulk |= bit;
    }
  }
  free_checked(s, page, p);
}
}  // namespace

void free_not_fast(void* p) noexcept {
  if (p == nullptr) return;
  Segment* s = segment_containing(p);
  if (s != nullptr && s->kind == SegmentKind::kHuge) {
    if (reinterpret_cast<uintptr_t>(p) != s->huge_start)
      fatal_pointer("free", p, "pointer into the middle of a huge block, not its start");
    huge_free(s, &s->pages[1]);
    heap_maintain_huge();
    return;
  }
  if (s != nullptr) invalid_pointer("free", p);
  foreign_free(p);
}

// ---- Thread exit --------------------------------------------------------------------------
namespace {

// Give every segment of the heap up for other threads to adopt, in two steps. First, without
// the heaps lock (heap_abandon_prepare): other threads' frees go to the pages from now on, the
// pages are collected, empty ones freed, and with `purge` the free slices go back to the OS;
// where threads come and go (exiting), an exiting thread's stay resident for the next one
// instead, within the allowance (segment_abandon_keep). Then, under the heaps lock
// (heap_abandon), the segments are handed over to the abandoned list, so that fork() never finds
// a segment in neither list. With the collecting and purging under the heaps lock too, threads
// that exit together waited for each other's madvise calls (`mstress --threads 8`: 2,800-16,300
// sched_yield calls a run, 99% of them in thread_done).
void heap_abandon_prepare(Heap* heap, bool purge, bool exiting) {
  heap_delayed_free_all(heap);
  // From now on other threads push their frees on the pages themselves.
  for_each_page(heap, [](Segment*, Page* p) {
    page_set_delay(p, kDelayNever, true);
    return false;
  });
  heap_delayed_free_all(heap);
  heap_collect(heap, true);
  if (!purge) return;
  uint64_t now = os::clock_ms();
  HeapSegGuard guard(heap);
  for (Segment* s = heap->segments; s != nullptr; s = s->next)
    if (!exiting || !segment_abandon_keep(s, now)) segment_purge(s, now, true);
}

void heap_abandon(Heap* heap, bool exiting) {
  uint64_t now = os::clock_ms();
  HeapSegGuard guard(heap);
  while (heap->segments != nullptr) {
    Segment* s = heap->segments;
    s->exit_ms = exiting ? now : 0;
    segment_abandon(s);
  }
  heap->purge_due_ms.store(0, std::memory_order_relaxed);
}

void thread_done(void* arg) noexcept {
  auto* heap = static_cast<Heap*>(arg);
  if (heap == nullptr || !heap->live) return;
  fcache_flush_all(heap);  // before the pages are abandoned: the blocks go home
  heap_abandon_prepare(heap, true, true);
  {
    // Under the heap-pool lock, which fork() takes first: a child never sees a heap half
    // handed over. (Lock order: heaps, then abandoned segments, then arenas.)
    LockGuard guard(g_heaps_lock);
    heap_abandon(heap, true);
  }
  if (t_heap == heap) t_heap = &g_empty_heap;
  heap_to_pool(heap);
}

constexpr uint64_t kWaitAbandonMs = 100;  // at most one give-up per this interval
constexpr uint64_t kWaitQuietMs = 1000;    // purge only after this long without a join

}  // namespace

// The thread is about to wait for another one (pthread_join). It may not call the allocator
// again for a long time, and no other thread may use or return what its segments hold: free
// blocks on its pages, free slices (only the owner allocates from them and purges them). So it
// gives its segments up, as an exiting thread does: after its foreign cache goes home and its
// empty pages are freed, each segment joins the abandoned list, where the running threads
// adopt them when they need room (reusing their free blocks and slices instead of new memory)
// and where other threads' frees of its live blocks wait as for a dead thread's. The heap stays
// live and empty; when the thread allocates again it adopts segments like any other. Its free
// slices are purged too, unless it joined less than a second ago (fork-join loops would fault
// their memory back in after every join); and it gives its segments up at most every 100 ms.
void heap_before_wait() noexcept {
  Heap* heap = t_heap;
  if (!heap->live || !option_bool(Option::kWaitHooks)) return;
  uint64_t now = os::clock_ms();
  bool quiet = heap->last_wait_ms == 0 || now - heap->last_wait_ms >= kWaitQuietMs;
  heap->last_wait_ms = now;
  if (heap->segments == nullptr) return;
  if (heap->last_wait_abandon_ms != 0 && now - heap->last_wait_abandon_ms < kWaitAbandonMs) return;
  heap->last_wait_abandon_ms = now;
  fcache_flush_all(heap);
  spare_flush(heap);
  heap_abandon_prepare(heap, quiet, false);
  {
    LockGuard guard(g_heaps_lock);  // as at thread exit: fork() never sees a half-abandoned heap
    heap_abandon(heap, false);
  }
  for (auto& q : heap->queues) q = PageQueue{};
  heap->full = PageQueue{};
  class_blocks_reset(heap);
  for (unsigned cls = 0; cls < kClassCount; ++cls) heap_update_direct(heap, cls);
  arena_purge(false);
}

// The thread is about to wait on a condition variable (pthread_cond_wait, timedwait,
// clockwait), as a pool worker does between jobs. It may not call the allocator again for a
// long time, and only its own maintenance gives back the memory of the free blocks on its
// sparse pages (the other threads purge its free slices, nothing more: a page's free lists are
// its owner's). 64 quiet workers that each kept one block in 50 of 16 MiB held all of it
// (`quiet-thread --workers 64 --mib 16 --keep 50`). So the sparse pages give their free blocks'
// memory back now, its spare pages go back to their segments (free slices, which the other
// threads purge) and its class caches home. Never inside a pressure callback, which may run in
// the middle of the allocator's own work. At most once per purge delay, and less often while it
// is wasted: a thread that waits a moment between jobs that fill its pages again carves the
// punched memory back within a second (page faults). Each time half of what the last punch
// gave back came back within four purge delays, the next punch is skipped and the interval
// doubles (up to 32 purge delays); a punch whose memory stayed away resets it.
void heap_before_cond_wait() noexcept {
  Heap* heap = t_heap;
  if (budget_in_callback() || t_locks_held != 0 || !option_bool(Option::kWaitHooks)) return;
  const uint64_t now = os::clock_ms_coarse();
  heap_purge_due(heap, now);
  if (!heap->live || heap->segments == nullptr || now < heap->next_cond_wait_ms) return;
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  if (heap->wait_punched != 0) {
    const bool wasted = (heap->refilled_bytes - heap->wait_refill_mark) * 2 > heap->wait_punched &&
                        now - heap->wait_punch_ms < 4 * delay;
    heap->wait_punched = 0;
    if (wasted) {
      if (heap->wait_backoff < 5) heap->wait_backoff++;
      heap->next_cond_wait_ms = now + (delay << heap->wait_backoff);
      return;
    }
    heap->wait_backoff = 0;
  }
  heap->next_cond_wait_ms = now + (delay << heap->wait_backoff);
  const int saved = errno;  // (sem_wait reports through errno)
  // Blocks other threads freed into its full pages wait on its delayed list until its next
  // slow-path allocation: taken now, those pages are judged with the others below.
  heap_delayed_free_all(heap);
  fcache_flush_all(heap);
  spare_flush(heap);
  heap->wait_punched = heap_punch_sparse(heap, now, SIZE_MAX);
  errno = saved;
  heap->wait_punch_ms = now;
  heap->wait_refill_mark = heap->refilled_bytes;
}

// The thread is about to block until an event or a time: epoll_wait, poll, select, nanosleep
// and the like, with a timeout other than zero (interpose/block.cpp). An event loop that waits
// there between requests, with nothing else in the process running, is a thread that has stopped
// calling the allocator's slow paths, where its maintenance runs: a server that freed most of
// its data (a cache flushed) kept all of it resident for as long as no request came, and kept
// it across requests served from its free lists (Redis after FLUSHALL: 127 MiB resident for
// good, where its own jemalloc's purge thread and glibc's trim gave it back). So the memory whose
// purge time has come goes back here, as the thread's own maintenance would have done it: an
// event loop with a timer (Redis: 100 ms) gives back what it freed within a purge delay and a
// tick. Nothing else happens here (no punch of sparse pages, no flush of caches): these calls
// can come from a signal handler, and they run thousands of times a second in busy servers.
// What is still waiting to be purged decides where a long wait is split (interpose/block.cpp):
// an event loop with no timer blocks in epoll_wait with no timeout right after its frees.
// NEBULA_MEM_WAIT_HOOKS, read once (the blocking calls check it on every call): -1 not yet read.
static std::atomic<int> g_wait_hooks{-1};

int heap_before_block() noexcept {
  const uint64_t now = os::clock_ms_coarse();
  if (t_locks_held != 0) return -1;
  int on = g_wait_hooks.load(std::memory_order_relaxed);
  if (NEBULA_UNLIKELY(on < 0)) g_wait_hooks.store(on = option_bool(Option::kWaitHooks) ? 1 : 0, std::memory_order_relaxed);
  if (on == 0) return -1;
  Heap* heap = t_heap;
  if (now >= t_due_check_ms) heap_purge_due(heap, now);
  // What is left to purge, and when (for the wrappers that split a long wait there).
  uint64_t due = heap->live ? heap->purge_due_ms.load(std::memory_order_relaxed) : 0;
  const uint64_t chunks = arena_next_purge_ms();
  if (due == 0 || (chunks != 0 && chunks < due)) due = chunks;
  if (due == 0) return -1;
  if (due < t_due_check_ms) due = t_due_check_ms;
  const uint64_t wait = due > now ? due - now : 0;
  return static_cast<int>(wait < kBlockSplitMinMs ? kBlockSplitMinMs : wait > INT32_MAX ? INT32_MAX : wait);
}

namespace {

void fork_prepare() noexcept {
  g_heaps_lock.lock();
  segments_fork_prepare();
  arenas_fork_prepare();
}

void fork_parent() noexcept {
  arenas_fork_parent();
  segments_fork_parent();
  g_heaps_lock.unlock();
}

// In the child only the forking thread exists: the heaps of the other threads are orphans.
// Abandon their segments so that the child's heap can reclaim and reuse that memory.
void fork_child() noexcept {
  arenas_fork_child();
  segments_fork_child();
  g_heaps_lock.reset();
  Heap* me = t_heap;
  for (Heap* h = g_all_heaps; h != nullptr; h = h->next_heap) {
    if (!h->live || h == me) continue;
    h->seg_lock.reset_orphan();  // its owner may have been in span_alloc at the fork
    h->seg_depth = 0;
    // A thread may have died in the middle of announcing a free: force every state.
    for_each_page(h, [](Segment*, Page* p) {
      uintptr_t tf = p->thread_free.load(std::memory_order_relaxed);
      p->thread_free.store((tf & ~kDelayMask) | kDelayNever, std::memory_order_relaxed);
      return false;
    });
    Block* b = h->delayed_free.exchange(nullptr, std::memory_order_relaxed);
    while (b != nullptr) {
      Block* next = link_get(b);
      Page* page = page_of(segment_of(b), b);
      link_set(b, page->local_free);
      page->local_free = b;
      page->used--;
      b = next;
    }
    // Take the segment list as it stands; a thread that died while changing it may have left
    // it torn, so walk it with a bound and detach each segment without trusting back links.
    // Its spare pages stay empty spans: a heap that adopts their segments frees them.
    h->spare = nullptr;
    h->spare_count = 0;
    h->runs = PageQueue{};  // (its pages' links are cleared as their segments are abandoned)
    if (g_runs) memset(static_cast<void*>(runs_bins(h)), 0, sizeof(RunBins));
    Segment* s = h->segments;
    h->segments = nullptr;
    h->punch_next = nullptr;
    memset(static_cast<void*>(h->bins), 0, sizeof h->bins);
    h->bin_mask[0] = h->bin_mask[1] = 0;
    h->resident_free_slices = h->large_slices = 0;
    size_t bound = g_counters.segments.load(std::memory_order_relaxed) + 1;
    for (size_t i = 0; s != nullptr && i < bound; ++i) {
      Segment* next = s->next;
      s->owner_heap.store(nullptr, std::memory_order_relaxed);
      segment_abandon(s);
      s = next;
    }
  }
  // The dead threads' foreign caches: every page is abandoned now (or ours), so each block
  // goes back to its page's thread_free list.
  for (Heap* h = g_all_heaps; h != nullptr; h = h->next_heap) {
    if (!h->live || h == me) continue;
    fcache_flush_all(h);
    heap_to_pool(h);
  }
}

}  // namespace

void heaps_collect_abandoned(bool force) noexcept {
  Heap* heap = t_heap;
  if (!heap->live) return;
  size_t n = abandoned_count();
  while (n-- > 0 && segment_reclaim_one(heap, false)) {
  }
  heap_maintenance(heap, force);
}

// Walk every heap (stats). fn is called under the heaps lock.
void for_each_live_heap(void (*fn)(Heap*, void*), void* ctx, HeapStats* retired) noexcept {
  LockGuard guard(g_heaps_lock);
  if (retired != nullptr) *retired = g_retired_stats;
  for (Heap* h = g_all_heaps; h != nullptr; h = h->next_heap)
    if (h->live) fn(h, ctx);
}

}  // namespace nebula
