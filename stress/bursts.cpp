// stress/bursts.cpp: phases of mass allocation and mass release.
static const char* kAbout =
    "Models programs that work in phases (a compiler pass, a batch job, a request that builds\n"
    "a large structure and drops it, a garbage collector's sweep): in each round all threads\n"
    "allocate a burst of blocks at once (rounds of equal small sizes, of mixed tiers, of medium\n"
    "and large blocks, and of small blocks with huge ones among them), wait for each other,\n"
    "then free them all in a random order, half of them from another thread, and wait again.\n"
    "After every fourth round each thread calls nebula_mem_collect() and the first thread\n"
    "checks, with nebula_mem_get_stats(), that the live bytes are back where they were at the\n"
    "start (nothing leaked, nothing counted twice).";

#include "common.hpp"

#include <barrier>
#include <thread>
#include <vector>

#include "nebula/mem.h"

using namespace stress;

namespace {

struct Shared {
  Options o;
  std::vector<std::vector<Block>> blocks;   // per thread, the current burst
  std::barrier<> bar;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ops{0}, remote{0};
  unsigned rounds = 0;
  uint64_t peak_live = 0, checks = 0, worst_growth = 0;
  nebula_mem_stats st0{};
  int (*get_stats)(nebula_mem_stats*) = nullptr;
  int (*collect)() = nullptr;
  explicit Shared(const Options& opts) : o(opts), blocks(opts.threads), bar(opts.threads) {}
};

size_t burst_size(Rng& r, unsigned kind, size_t fixed, size_t huge_max) {
  switch (kind) {
    case 0: return fixed;                                       // equal small sizes
    case 1: {                                                    // the usual mix
      TierMix m;
      m.w[0] = 900; m.w[1] = 80; m.w[2] = 19; m.w[3] = 1;
      return pick_size(r, m, huge_max < 16 * MiB ? huge_max : 16 * MiB);
    }
    case 2: return size_in_tier(r, r.chance(70) ? kMedium : kLarge, huge_max);
    default:   // small, with a huge block among every 400 or so
      return r.below(1000) >= 3 ? size_in_tier(r, kSmall, huge_max) : size_in_tier(r, kHuge, huge_max < 12 * MiB ? huge_max : 12 * MiB);
  }
}

void worker(Shared* sh, unsigned id) {
  const Options& o = sh->o;
  Rng r(o.seed * 7 + id);
  size_t base = static_cast<size_t>((o.smoke ? 3000 : 10000) * o.scale);
  if (base < 16) base = 16;
  Bound bound(o);
  uint64_t ops = 0, remote = 0;
  for (unsigned round = 0;; ++round) {
    // thread 0 decides whether to go on; everybody learns it at the barrier
    if (id == 0 && (!bound.time_left() || (o.iters != 0 && round >= o.iters))) sh->stop.store(true);
    sh->bar.arrive_and_wait();
    if (sh->stop.load()) break;
    unsigned kind = round % 4;
    size_t count = kind == 0 ? base : kind == 1 ? base / 2 : kind == 2 ? base / 40 + 1 : base / 2;
    size_t fixed = 16 * (1 + (round * 7 + id) % 64);
    auto& mine = sh->blocks[id];
    mine.resize(count);
    for (size_t k = 0; k < count; ++k) {
      size_t n = burst_size(r, kind, fixed, o.huge_max);
      Api api = pick_api(r);
      if (!allocate(r, api, n, &mine[k], id)) {
        error("bursts: %s(%zu) returned NULL", api_name(api), n);
        mine[k] = Block{};
      }
      ++ops;
    }
    sh->bar.arrive_and_wait();
    if (id == 0 && sh->get_stats) {
      nebula_mem_stats st;
      sh->get_stats(&st);
      if (st.live_bytes > sh->peak_live) sh->peak_live = st.live_bytes;
    }
    // free: my even blocks, and the odd blocks of the next thread, all in a random order
    unsigned other = (id + 1) % o.threads;
    std::vector<Block*> todo;
    for (size_t k = 0; k < mine.size(); k += 2) todo.push_back(&mine[k]);
    auto& theirs = sh->blocks[other];
    for (size_t k = 1; k < theirs.size(); k += 2) todo.push_back(&theirs[k]);
    if (o.threads == 1)
      for (size_t k = 1; k < mine.size(); k += 2) todo.push_back(&mine[k]);
    for (size_t k = todo.size(); k > 1; --k) std::swap(todo[k - 1], todo[r.below(k)]);
    for (Block* b : todo) {
      if (b->p == nullptr) continue;
      if (other != id && b >= theirs.data() && b < theirs.data() + theirs.size()) ++remote;
      release(*b, "bursts: free after the burst");
      ++ops;
    }
    std::vector<Block*>().swap(todo);
    sh->bar.arrive_and_wait();
    if (round % 4 == 3 && sh->collect) {
      // Blocks freed by other threads wait on their pages until the owner collects them.
      sh->collect();
      sh->bar.arrive_and_wait();
      if (id == 0 && sh->get_stats) {
        nebula_mem_stats st;
        sh->get_stats(&st);
        sh->checks++;
        // what is still live: the vectors of block records (kept capacity) and stdio
        size_t records = 0;
        for (auto& v : sh->blocks) records += v.capacity() * sizeof(Block);
        uint64_t allowed = sh->st0.live_bytes + 2 * records + MiB;
        uint64_t growth = st.live_bytes > sh->st0.live_bytes ? st.live_bytes - sh->st0.live_bytes : 0;
        if (growth > sh->worst_growth) sh->worst_growth = growth;
        if (st.live_bytes > allowed)
          error("bursts: after round %u, everything freed and collected, live bytes are %llu; at the start %llu "
                "(allowed %llu): blocks leaked or counted twice",
                round, static_cast<unsigned long long>(st.live_bytes),
                static_cast<unsigned long long>(sh->st0.live_bytes), static_cast<unsigned long long>(allowed));
      }
    }
    if (id == 0) sh->rounds = round + 1;
  }
  sh->ops += ops;
  sh->remote += remote;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_standard(argc, argv, kAbout, "bursts");
  Run run(o);
  Shared sh(o);
  sh.get_stats = nebula_fn<int (*)(nebula_mem_stats*)>("nebula_mem_get_stats");
  sh.collect = nebula_fn<int (*)()>("nebula_mem_collect");
  if (sh.get_stats) {
    if (sh.collect) sh.collect();
    sh.get_stats(&sh.st0);
  }
  std::vector<std::thread> ts;
  for (unsigned t = 1; t < o.threads; ++t) ts.emplace_back(worker, &sh, t);
  worker(&sh, 0);   // thread 0 is this thread
  for (auto& t : ts) t.join();
  std::string extra = kv("rounds", sh.rounds) + kv("cross_thread", sh.remote);
  if (sh.get_stats)
    extra += kv("peak_live_mib", sh.peak_live >> 20) + kv("leak_checks", sh.checks) +
             kv("live_growth_kib", sh.worst_growth >> 10);
  return run.finish(sh.ops, extra);
}
