// larson: a server that replaces random blocks in a shared array, modelled on Larson and
// Krishnan's "Memory allocation for long-running server applications" (ISMM 1998) benchmark.
//
// A table of `slots` blocks is shared by every thread. Each operation picks a random slot,
// allocates a block of a random size in [min, max], swaps it in (one atomic exchange) and frees
// the block it displaced, which another thread (or an earlier round's thread) usually allocated:
// blocks die on other threads. The work is split into `rounds`; each round starts fresh threads
// and the previous round's threads exit, as larson's server threads hand their work to new ones,
// so thread-exit and reclaim paths are part of the run.
//
// Verifies: every block's contents are checked when it is freed (tag written at allocation), and
// the sum of the tags of all blocks allocated equals the sum of the tags freed at the end.
#include "common.hpp"

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const int threads = static_cast<int>(a.num("threads", 2, 2));
  const long rounds = a.num("rounds", 8, 2);
  const long slots = a.num("slots", 20000, 500);
  const long ops = a.num("ops", 12000000, 20000);
  const long lo = a.num("min", 8, 8), hi = a.num("max", 1000, 1000);
  a.done("larson [--threads 2] [--rounds 8] [--slots 20000] [--ops 12000000] [--min 8] [--max 1000] [--smoke]");
  if (threads < 1 || rounds < 1 || slots < 1 || lo < 1 || hi < lo) wl::usage_error("bad parameters");

  auto* table = new std::atomic<void*>[static_cast<size_t>(slots)];
  std::atomic<uint64_t> tags_in{0}, tags_out{0};
  uint64_t in0 = 0;
  wl::Rng r0(1);
  for (long i = 0; i < slots; i++) {
    uint32_t tag = static_cast<uint32_t>(r0.next());
    table[i].store(wl::tagged_alloc(r0.range(lo, hi), tag), std::memory_order_relaxed);
    in0 += tag;
  }
  tags_in = in0;

  const long per_thread = ops / (rounds * threads);
  double t0 = wl::now();
  for (long round = 0; round < rounds; round++) {
    wl::run_threads(threads, [&](int t) {
      wl::Rng rng(static_cast<uint64_t>(round * 1000 + t + 7));
      uint64_t in = 0, out = 0;
      for (long i = 0; i < per_thread; i++) {
        size_t idx = rng.below(static_cast<uint64_t>(slots));
        uint32_t tag = static_cast<uint32_t>(rng.next());
        void* p = wl::tagged_alloc(rng.range(lo, hi), tag);
        in += tag;
        void* old = table[idx].exchange(p, std::memory_order_acq_rel);
        out += wl::tagged_free(old);
      }
      tags_in += in;
      tags_out += out;
    });
  }
  double t1 = wl::now();

  uint64_t out = 0;
  for (long i = 0; i < slots; i++) out += wl::tagged_free(table[i].load());
  tags_out += out;
  delete[] table;
  if (tags_in.load() != tags_out.load())
    wl::fail("tag sums differ: allocated %llu, freed %llu", (unsigned long long)tags_in.load(),
             (unsigned long long)tags_out.load());
  printf("ops=%ld\n", per_thread * rounds * threads);
  wl::report(t1 - t0);
  return 0;
}
