// stress/mixed.cpp: the long-running server heap.
static const char* kAbout =
    "Models a long-running multi-threaded server: every thread keeps a table of live objects\n"
    "and replaces them at random with objects of every tier (16 B .. 64 MiB: small, medium,\n"
    "large, huge), made through every API (malloc, calloc, posix_memalign, aligned_alloc,\n"
    "memalign, operator new / new[] / nothrow / aligned). Some objects are handed to another\n"
    "thread, which verifies and frees them (cross-thread free) or keeps them and later reallocs\n"
    "them there; some are grown or shrunk in place with realloc. Every block carries a pattern\n"
    "derived from its address and size and is verified before every free and realloc.";

#include "common.hpp"

#include <mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {

struct Inbox {
  std::mutex m;
  std::vector<Block> items;
};

struct Shared {
  Options o;
  std::vector<Inbox> inbox;
  std::atomic<uint64_t> ops{0}, handed{0}, adopted{0}, reallocs{0};
  std::atomic<uint64_t> per_tier[kTierCount] = {};
  explicit Shared(const Options& opts) : o(opts), inbox(opts.threads) {}
};

void worker(Shared* sh, unsigned id) {
  const Options& o = sh->o;
  Rng r(o.seed + id * 7919);
  size_t slots = static_cast<size_t>((o.smoke ? 256 : 1024) * o.scale);
  if (slots < 16) slots = 16;
  std::vector<Block> table(slots);
  // at most this many live bytes in huge blocks per thread
  size_t huge_cap = static_cast<size_t>((o.smoke ? 96 : 256) * MiB * o.scale);
  size_t huge_live = 0;
  TierMix mix;
  Bound bound(o);
  uint64_t ops = 0, handed = 0, adopted = 0, reallocs = 0;
  uint64_t tiers[kTierCount] = {};

  auto drain = [&](bool keep_some) {
    std::vector<Block> got;
    {
      std::lock_guard<std::mutex> g(sh->inbox[id].m);
      got.swap(sh->inbox[id].items);
    }
    for (Block& b : got) {
      size_t k = static_cast<size_t>(r.below(slots));
      if (keep_some && table[k].p == nullptr && b.n <= 2 * MiB && r.chance(30)) {
        check(b, "mixed: adopted block");
        table[k] = b;  // freed or realloced later by this thread, not the one that made it
        ++adopted;
      } else {
        release(b, "mixed: cross-thread free");
      }
      ++ops;
    }
  };

  for (uint64_t i = 0; bound.more(i); ++i) {
    size_t k = static_cast<size_t>(r.below(slots));
    Block& b = table[k];
    if (b.p != nullptr) {
      unsigned what = static_cast<unsigned>(r.below(100));
      if (what < 10 && b.via == Via::kFree) {
        size_t n = r.chance(50) ? size_in_tier(r, tier_of(b.n), o.huge_max) : pick_size(r, mix, o.huge_max);
        if (tier_of(n) == kHuge && huge_live + n > huge_cap) n = size_in_tier(r, kSmall, o.huge_max);
        size_t old = b.n;
        if (!reallocate(b, n, "mixed: realloc")) error("mixed: realloc(%p, %zu) failed", b.p, n);
        else {
          if (tier_of(old) == kHuge) huge_live -= old;
          if (tier_of(b.n) == kHuge) huge_live += b.n;
        }
        ++reallocs;
      } else if (what < 25 && o.threads > 1) {
        unsigned to = static_cast<unsigned>(r.below(o.threads - 1));
        if (to >= id) ++to;
        check(b, "mixed: before hand-over");
        if (tier_of(b.n) == kHuge) huge_live -= b.n;
        {
          std::lock_guard<std::mutex> g(sh->inbox[to].m);
          sh->inbox[to].items.push_back(b);
        }
        b = Block{};
        ++handed;
      } else {
        if (tier_of(b.n) == kHuge) huge_live -= b.n;
        release(b, "mixed: free");
      }
    } else {
      unsigned t = pick_tier(r, mix);
      if (t == kHuge && huge_live >= huge_cap) t = kSmall;
      size_t n = size_in_tier(r, t, o.huge_max);
      Api api = pick_api(r);
      if (!allocate(r, api, n, &b, id)) error("mixed: %s(%zu) returned NULL", api_name(api), n);
      else {
        if (t == kHuge) huge_live += n;
        ++tiers[t];
      }
    }
    ++ops;
    if ((i & 31) == 0) drain(true);
  }
  // Every thread stops producing, then the last inboxes are emptied.
  sh->ops += ops;
  sh->handed += handed;
  sh->adopted += adopted;
  sh->reallocs += reallocs;
  for (unsigned t = 0; t < kTierCount; ++t) sh->per_tier[t] += tiers[t];
  for (Block& b : table)
    if (b.p) release(b, "mixed: final free");
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_standard(argc, argv, kAbout, "mixed");
  Run run(o);
  Shared sh(o);
  run_workers(&sh, o.threads, worker);
  uint64_t left = 0;
  for (auto& in : sh.inbox) {
    for (Block& b : in.items) {
      release(b, "mixed: leftover");
      ++left;
    }
    in.items.clear();
  }
  return run.finish(sh.ops + left, kv("small", sh.per_tier[0]) + kv("medium", sh.per_tier[1]) +
                                       kv("large", sh.per_tier[2]) + kv("huge", sh.per_tier[3]) +
                                       kv("cross_thread", sh.handed) + kv("adopted", sh.adopted) +
                                       kv("reallocs", sh.reallocs));
}
