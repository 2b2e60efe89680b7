// stress/realloc_chains.cpp: buffers that grow and shrink through every tier with realloc.
static const char* kAbout =
    "Models growing buffers (string builders, vectors, read buffers, hash tables that rehash):\n"
    "every thread keeps a few chains; a chain starts with malloc or realloc(NULL, n), grows with\n"
    "realloc by small steps (in place while the block has room) and by factors up to 2x, through\n"
    "the small, medium, large and huge tiers up to --max-size, then shrinks back down the same\n"
    "way and ends with free or realloc(p, 0). Each step verifies the kept prefix (with the\n"
    "pattern of the block before the realloc) and refills the block with its new pattern. Some\n"
    "chains are passed to another thread halfway, which goes on reallocating a block it does\n"
    "not own.";

#include "common.hpp"

#include <mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {

struct Chain {
  Block b;
  size_t top = 0;        // size at which it turns to shrinking
  bool growing = true;
  unsigned owner_moves = 0;
};

struct Shared {
  Options o;
  std::mutex m;
  std::vector<Chain> pool;   // chains in transit between threads
  std::atomic<uint64_t> ops{0}, chains{0}, moved{0}, in_place{0}, max_reached{0};
  explicit Shared(const Options& opts) : o(opts) {}
};

size_t next_size(Rng& r, const Chain& c) {
  size_t n = c.b.n;
  if (c.growing) {
    if (n < 64 * KiB && r.chance(50)) return n + r.range(1, 64);
    if (r.chance(20)) return n + r.range(1, 4096);
    size_t grown = n + static_cast<size_t>(static_cast<double>(n) * (0.1 + 0.9 * static_cast<double>(r.below(1000)) / 1000.0));
    return grown > c.top ? c.top : grown;
  }
  if (n > 64 && r.chance(30)) return n - r.range(1, n / 8 + 1);
  size_t shrunk = static_cast<size_t>(static_cast<double>(n) * (0.3 + 0.6 * static_cast<double>(r.below(1000)) / 1000.0));
  return shrunk < 1 ? 1 : shrunk;
}

void worker(Shared* sh, unsigned id) {
  const Options& o = sh->o;
  Rng r(o.seed * 977 + id);
  unsigned nchains = static_cast<unsigned>((o.smoke ? 3 : 6) * o.scale);
  if (nchains < 1) nchains = 1;
  std::vector<Chain> mine(nchains);
  Bound bound(o);
  uint64_t ops = 0, chains = 0, moved = 0, in_place = 0, max_reached = 0;
  auto start_chain = [&](Chain& c) {
    size_t n = r.range(1, 64);
    void* p = r.chance(50) ? malloc(n) : realloc(nullptr, n);
    if (p == nullptr) {
      error("realloc_chains: allocation of %zu bytes returned NULL", n);
      return;
    }
    c.b = make_block(p, n, id);
    // where the chain turns: mostly within small/medium/large, a quarter into the huge tier
    unsigned t = r.chance(25) ? kHuge : static_cast<unsigned>(r.below(3));
    c.top = size_in_tier(r, t, o.huge_max);
    c.growing = true;
    c.owner_moves = 0;
    ++chains;
    ++ops;
  };
  for (uint64_t i = 0; bound.more(i); ++i) {
    Chain& c = mine[r.below(nchains)];
    if (c.b.p == nullptr) {
      // take a chain another thread passed on, or start one
      bool took = false;
      if (r.chance(50)) {
        std::lock_guard<std::mutex> g(sh->m);
        if (!sh->pool.empty()) {
          c = sh->pool.back();
          sh->pool.pop_back();
          took = true;
        }
      }
      if (took) check(c.b, "realloc_chains: chain taken from another thread");
      else start_chain(c);
      continue;
    }
    if (c.growing && c.b.n >= c.top) {
      c.growing = false;
      if (c.top > 2 * MiB) ++max_reached;
    }
    if (!c.growing && c.b.n <= 16) {
      // end of the chain
      check(c.b, "realloc_chains: end of chain");
      if (r.chance(50)) free(c.b.p);
      else if (realloc(c.b.p, 0) != nullptr) error("realloc_chains: realloc(p, 0) did not return NULL");
      c.b = Block{};
      ++ops;
      continue;
    }
    if (o.threads > 1 && c.owner_moves < 3 && r.chance(2)) {
      check(c.b, "realloc_chains: chain passed on");
      c.owner_moves++;
      {
        std::lock_guard<std::mutex> g(sh->m);
        sh->pool.push_back(c);
      }
      c.b = Block{};
      ++moved;
      continue;
    }
    size_t n = next_size(r, c);
    void* before = c.b.p;
    if (!reallocate(c.b, n, "realloc_chains: step")) {
      error("realloc_chains: realloc(%p, %zu) returned NULL", c.b.p, n);
      continue;
    }
    if (c.b.p == before) ++in_place;
    ++ops;
  }
  for (Chain& c : mine)
    if (c.b.p) release(c.b, "realloc_chains: final free");
  sh->ops += ops;
  sh->chains += chains;
  sh->moved += moved;
  sh->in_place += in_place;
  sh->max_reached += max_reached;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_standard(argc, argv, kAbout, "realloc_chains");
  Run run(o);
  Shared sh(o);
  run_workers(&sh, o.threads, worker);
  for (Chain& c : sh.pool) release(c.b, "realloc_chains: chain left in transit");
  return run.finish(sh.ops, kv("chains", sh.chains) + kv("in_place", sh.in_place) + kv("moved", sh.moved) +
                                kv("reached_huge", sh.max_reached));
}
