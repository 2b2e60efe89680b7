// stress/thread_churn.cpp: short-lived threads whose blocks outlive them.
static const char* kAbout =
    "Models thread-per-request servers and thread pools that grow and shrink: threads are\n"
    "started and end all the time (some joined, some detached), --threads of them at once.\n"
    "Each one allocates blocks of every tier, frees some, takes blocks that threads which\n"
    "have exited left in a shared pool (freeing or reallocating them: frees into the\n"
    "segments of dead threads, which the allocator abandons and another heap reclaims), and\n"
    "leaves some of its own blocks in the pool when it exits. Two long-lived threads also\n"
    "drain the pool. At the end the pool is emptied, every block verified, and the heap\n"
    "count of nebula_mem_get_stats() must fall back to the threads still alive.";

#include "common.hpp"

#include <mutex>
#include <thread>
#include <vector>

#include "nebula/mem.h"

using namespace stress;

namespace {

struct Shared {
  Options o;
  std::mutex m;
  std::vector<Block> pool;
  size_t pool_cap;
  std::atomic<uint64_t> ops{0}, started{0}, orphans_taken{0};
  std::atomic<int> running_detached{0};
  std::atomic<bool> stop{false};
  explicit Shared(const Options& opts) : o(opts) {
    pool_cap = static_cast<size_t>((opts.smoke ? 2000 : 8000) * opts.scale);
    if (pool_cap < 16) pool_cap = 16;
  }
};

void short_lived(Shared* sh, uint64_t seed, bool detached) {
  Rng r(seed);
  const Options& o = sh->o;
  uint64_t ops = 0, taken = 0;
  TierMix mix;
  mix.w[0] = 940; mix.w[1] = 50; mix.w[2] = 9; mix.w[3] = 1;
  unsigned nblocks = static_cast<unsigned>(r.range(8, o.smoke ? 150 : 400));
  std::vector<Block> mine(nblocks);
  for (Block& b : mine) {
    size_t n = pick_size(r, mix, o.huge_max < 16 * MiB ? o.huge_max : 16 * MiB);
    Api api = pick_api(r);
    if (!allocate(r, api, n, &b, seed)) error("thread_churn: %s(%zu) returned NULL", api_name(api), n);
    ++ops;
  }
  // free about half of my blocks
  for (Block& b : mine)
    if (b.p && r.chance(50)) {
      release(b, "thread_churn: free of an own block");
      ++ops;
    }
  // blocks left by threads that are gone
  std::vector<Block> got;
  {
    std::lock_guard<std::mutex> g(sh->m);
    size_t k = r.range(0, 64);
    while (k-- > 0 && !sh->pool.empty()) {
      size_t i = r.below(sh->pool.size());
      got.push_back(sh->pool[i]);
      sh->pool[i] = sh->pool.back();
      sh->pool.pop_back();
    }
  }
  for (Block& b : got) {
    ++taken;
    if (b.via == Via::kFree && r.chance(25)) {
      if (!reallocate(b, pick_size(r, mix, 4 * MiB), "thread_churn: realloc of an orphan block"))
        error("thread_churn: realloc returned NULL");
      // it is mine now: maybe left in the pool again
      mine.push_back(b);
    } else {
      release(b, "thread_churn: free of an orphan block");
    }
    ++ops;
  }
  // leave what is left to the threads that come after
  {
    std::lock_guard<std::mutex> g(sh->m);
    for (Block& b : mine) {
      if (!b.p) continue;
      check(b, "thread_churn: block left behind");
      if (sh->pool.size() < sh->pool_cap) sh->pool.push_back(b);
      else release(b, "thread_churn: free (pool full)");
    }
  }
  sh->ops += ops;
  sh->orphans_taken += taken;
  if (detached) sh->running_detached--;
}

void drainer(Shared* sh, unsigned id) {
  Rng r(sh->o.seed * 11 + id);
  uint64_t ops = 0;
  while (!sh->stop.load()) {
    std::vector<Block> got;
    {
      std::lock_guard<std::mutex> g(sh->m);
      size_t k = 32;
      while (k-- > 0 && sh->pool.size() > sh->pool_cap / 2) {
        got.push_back(sh->pool.back());
        sh->pool.pop_back();
      }
    }
    for (Block& b : got) {
      release(b, "thread_churn: free by a long-lived thread");
      ++ops;
    }
    if (got.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  sh->ops += ops;
}

}  // namespace

int main(int argc, char** argv) {
  Options d;
  d.name = "thread_churn";
  d.threads = 8;
  Options smoke = d;
  smoke.threads = 8;
  smoke.seconds = 4;
  Options o = parse_options(argc, argv, kAbout, d, smoke);
  Run run(o);
  auto get_stats = nebula_fn<int (*)(nebula_mem_stats*)>("nebula_mem_get_stats");
  auto collect = nebula_fn<int (*)()>("nebula_mem_collect");
  Shared sh(o);
  std::thread d1(drainer, &sh, 1u), d2(drainer, &sh, 2u);
  Bound bound(o);
  Rng r(o.seed);
  std::vector<std::thread> joinable;
  uint64_t started = 0, create_failures = 0;
  for (uint64_t i = 0; bound.time_left() && (o.iters == 0 || started < o.iters); ++i) {
    // keep at most o.threads short-lived threads at a time
    while (joinable.size() + static_cast<size_t>(sh.running_detached.load()) >= o.threads) {
      if (!joinable.empty()) {
        size_t k = r.below(joinable.size());
        joinable[k].join();
        joinable[k] = std::move(joinable.back());
        joinable.pop_back();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    bool detach = r.chance(40);
    try {
      if (detach) {
        sh.running_detached++;
        std::thread(short_lived, &sh, r.next(), true).detach();
      } else {
        joinable.emplace_back(short_lived, &sh, r.next(), false);
      }
      ++started;
    } catch (const std::system_error&) {
      if (detach) sh.running_detached--;
      ++create_failures;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  for (auto& t : joinable) t.join();
  while (sh.running_detached.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sh.stop = true;
  d1.join();
  d2.join();
  uint64_t left = 0;
  for (Block& b : sh.pool) {
    release(b, "thread_churn: final free");
    ++left;
  }
  sh.pool.clear();
  std::string extra = kv("threads_started", started) + kv("orphans_taken", sh.orphans_taken);
  if (create_failures) extra += kv("create_failures", create_failures);
  if (get_stats && collect) {
    // Detached threads may still be in their exit path: give them a moment to hand their
    // heaps back. Only this thread is left: 1 heap (2 while a detached exit finishes).
    nebula_mem_stats st{};
    for (int k = 0; k < 200; ++k) {
      collect();
      get_stats(&st);
      if (st.heaps <= 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (st.heaps > 1) error("thread_churn: %llu heaps still in use with one thread left", static_cast<unsigned long long>(st.heaps));
    extra += kv("abandoned_segments", st.abandoned_segments) + kv("reclaimed_segments", st.reclaimed_segments) +
             kv("heaps_at_end", st.heaps) + kv("segments_at_end", st.segments);
  }
  return run.finish(sh.ops + left + started, extra);
}
