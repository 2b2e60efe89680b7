// stress/quiet.cpp: threads that go quiet while others purge their heaps.
static const char* kAbout =
    "Models thread pools whose workers sleep between jobs: each thread allocates a burst of\n"
    "blocks of every tier, verifies and frees most of them (a few from the next thread's\n"
    "burst), keeps the rest across a sleep or a condition-variable wait of 0-30 ms and\n"
    "verifies and frees them after it (before the wait, the thread punches its sparse pages).\n"
    "While a thread sleeps its heap runs no maintenance, so the other threads' maintenance\n"
    "purges its free slices (heaps_purge_idle) while it may wake up and allocate from the same\n"
    "segments: blocks kept across the sleep must keep their contents, and new blocks must be\n"
    "usable. Unless NEBULA_MEM_PURGE_DELAY is set, the program runs itself again with 2 ms, so\n"
    "that such purges happen all the time. The sleeps purge what is due before they block\n"
    "(heap_before_block), and so do the handlers of a profiling timer (SIGPROF every 500 us of\n"
    "CPU time), which call nanosleep and ppoll of 1 ns wherever the signal lands, in the middle\n"
    "of malloc or free included. At the end, with nebula-memory preloaded, the purged byte count\n"
    "must have grown, and the handlers must have run.";

#include "common.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "nebula/mem.h"

using namespace stress;

namespace {

struct Shared {
  Options o;
  std::mutex mu;
  std::vector<std::vector<Block>> handoff;  // per thread: blocks the previous thread passed it
  std::atomic<uint64_t> ops{0}, sleeps{0};
  explicit Shared(const Options& opts) : o(opts), handoff(opts.threads) {}
};

void worker(Shared* sh, unsigned id) {
  const Options& o = sh->o;
  Rng r(o.seed * 13 + id);
  Bound bound(o);
  TierMix mix;
  mix.w[0] = 800; mix.w[1] = 150; mix.w[2] = 45; mix.w[3] = 5;
  std::mutex idle_mu;
  std::condition_variable idle_cv;
  const size_t base = static_cast<size_t>((o.smoke ? 800 : 3000) * o.scale) + 16;
  uint64_t ops = 0, sleeps = 0;
  std::vector<Block> burst, kept;
  for (uint64_t round = 0; bound.more(round * 64); ++round) {
    size_t count = base / 2 + r.below(base);
    burst.resize(count);
    for (size_t k = 0; k < count; ++k) {
      size_t n = pick_size(r, mix, o.huge_max < 8 * MiB ? o.huge_max : 8 * MiB);
      Api api = pick_api(r);
      if (!allocate(r, api, n, &burst[k], id)) {
        error("quiet: %s(%zu) returned NULL", api_name(api), n);
        burst[k] = Block{};
      }
      ++ops;
    }
    // One block in 4 stays across the sleep, one in 16 goes to the next thread, the rest are
    // verified and freed now, in a random order.
    std::vector<Block> pass;
    for (size_t k = count; k > 1; --k) std::swap(burst[k - 1], burst[r.below(k)]);
    for (Block& b : burst) {
      if (b.p == nullptr) continue;
      uint64_t c = r.below(16);
      if (c < 4) kept.push_back(b);
      else if (c == 4 && o.threads > 1) pass.push_back(b);
      else release(b, "quiet: free of the burst");
      ++ops;
    }
    burst.clear();
    if (!pass.empty()) {
      std::lock_guard<std::mutex> lk(sh->mu);
      auto& to = sh->handoff[(id + 1) % o.threads];
      to.insert(to.end(), pass.begin(), pass.end());
    }
    std::vector<Block> mine;
    {
      std::lock_guard<std::mutex> lk(sh->mu);
      mine.swap(sh->handoff[id]);
    }
    for (Block& b : mine) {
      release(b, "quiet: free of a block passed by the previous thread");
      ++ops;
    }
    // Go quiet: no allocator call for 0-30 ms, half the time in a sleep, half in a timed wait
    // on a condition variable nobody signals (a pool worker's wait for a job), before which the
    // thread gives back the memory of its sparse pages' free blocks (heap_before_cond_wait).
    const auto quiet = std::chrono::microseconds(r.below(30000));
    if (r.below(2) == 0) {
      std::this_thread::sleep_for(quiet);
    } else {
      std::unique_lock<std::mutex> lk(idle_mu);
      idle_cv.wait_for(lk, quiet);
    }
    ++sleeps;
    for (Block& b : kept) {
      release(b, "quiet: free of a block kept across the sleep");
      ++ops;
    }
    kept.clear();
  }
  sh->ops += ops;
  sh->sleeps += sleeps;
}

// SIGPROF: block for a nanosecond in the two ways a handler may (both async-signal-safe), so
// that the wrappers' purge runs wherever the signal interrupted the thread.
std::atomic<uint64_t> g_signals{0};

void on_prof(int) {
  const int saved = errno;
  const uint64_t n = g_signals.fetch_add(1, std::memory_order_relaxed);
  struct timespec ts = {0, 1};
  if (n % 2 == 0) nanosleep(&ts, nullptr);
  else ppoll(nullptr, 0, &ts, nullptr);
  errno = saved;
}

void prof_timer(long usec) {
  struct itimerval it = {};
  it.it_interval.tv_usec = usec;
  it.it_value.tv_usec = usec;
  setitimer(ITIMER_PROF, &it, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  if (getenv("NEBULA_MEM_PURGE_DELAY") == nullptr) {
    // The allocator reads its options once, at start: run again with a short purge delay.
    setenv("NEBULA_MEM_PURGE_DELAY", "2", 1);
    execv("/proc/self/exe", argv);
    perror("quiet: execv /proc/self/exe");
    return 2;
  }
  Options o = parse_standard(argc, argv, kAbout, "quiet");
  Run run(o);
  Shared sh(o);
  auto get_stats = nebula_fn<int (*)(nebula_mem_stats*)>("nebula_mem_get_stats");
  nebula_mem_stats st0{}, st1{};
  if (get_stats) get_stats(&st0);
  struct sigaction sa = {};
  sa.sa_handler = on_prof;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPROF, &sa, nullptr);
  prof_timer(500);
  run_workers(&sh, o.threads, worker);
  prof_timer(0);
  // Blocks passed to a thread after its last round.
  for (auto& v : sh.handoff)
    for (Block& b : v) {
      release(b, "quiet: free of a block passed at the end");
      ++sh.ops;
    }
  std::string extra = kv("sleeps", sh.sleeps.load()) + kv("signals", g_signals.load());
  if (g_signals.load() == 0) error("quiet: the profiling timer's handler never ran");
  if (get_stats) {
    get_stats(&st1);
    uint64_t purged = st1.purged_bytes - st0.purged_bytes;
    extra += kv("purged_mib", purged >> 20);
    if (o.threads > 1 && purged == 0) error("quiet: nothing was purged while threads slept");
  }
  return run.finish(sh.ops, extra);
}
