// stress/xthread.cpp: a message-passing pipeline (cross-thread frees and reallocs).
static const char* kAbout =
    "Models a message-passing program (actors, RPC buffers, work queues): threads form a ring;\n"
    "each one allocates messages of every tier and sends them to the next thread's queue, and\n"
    "takes messages from its own queue, verifies them and then frees them (a free by a thread\n"
    "that did not allocate the block), reallocs them to a new size and passes them on (a\n"
    "realloc by a thread that does not own the block), or passes them on unchanged. Most\n"
    "blocks are freed by another thread than the one that made them, so the remote-free lists\n"
    "(and, for full pages, the delayed-free lists) carry most of the traffic.";

#include "common.hpp"

#include <deque>
#include <mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {

struct Msg {
  Block b;
  unsigned hops;
  unsigned origin;
};

struct Queue {
  std::mutex m;
  std::deque<Msg> q;
};

struct Shared {
  Options o;
  std::vector<Queue> queues;
  size_t cap;
  std::atomic<int64_t> in_flight{0};
  std::atomic<unsigned> producing;
  std::atomic<uint64_t> ops{0}, remote_frees{0}, remote_reallocs{0}, hops{0};
  explicit Shared(const Options& opts) : o(opts), queues(opts.threads), producing(opts.threads) {
    cap = static_cast<size_t>((opts.smoke ? 128 : 512) * opts.scale);
    if (cap < 8) cap = 8;
  }
};

bool try_send(Shared* sh, unsigned to, const Msg& m) {
  Queue& q = sh->queues[to];
  std::lock_guard<std::mutex> g(q.m);
  if (q.q.size() >= sh->cap) return false;
  q.q.push_back(m);
  return true;
}

void worker(Shared* sh, unsigned id) {
  const Options& o = sh->o;
  Rng r(o.seed * 31 + id);
  unsigned next = (id + 1) % o.threads;
  TierMix mix;
  mix.w[0] = 850; mix.w[1] = 120; mix.w[2] = 28; mix.w[3] = 2;
  Bound bound(o);
  uint64_t ops = 0, remote_frees = 0, remote_reallocs = 0, hops = 0;
  bool producing = true;
  std::vector<Msg> batch;
  for (uint64_t i = 0;; ++i) {
    if (producing && !bound.more(i)) {
      producing = false;
      sh->producing.fetch_sub(1);
    }
    if (producing) {
      // produce one or a few messages
      unsigned n = 1 + static_cast<unsigned>(r.below(3));
      for (unsigned k = 0; k < n; ++k) {
        Msg m{};
        size_t sz = pick_size(r, mix, o.huge_max);
        Api api = pick_api(r);
        if (!allocate(r, api, sz, &m.b, id)) {
          error("xthread: %s(%zu) returned NULL", api_name(api), sz);
          continue;
        }
        m.origin = id;
        sh->in_flight.fetch_add(1);
        ++ops;
        if (!try_send(sh, next, m)) {
          release(m.b, "xthread: free of an unsent message");
          sh->in_flight.fetch_sub(1);
          ++ops;
        }
      }
    }
    // consume
    batch.clear();
    {
      Queue& q = sh->queues[id];
      std::lock_guard<std::mutex> g(q.m);
      size_t take = q.q.size() < 16 ? q.q.size() : 16;
      for (size_t k = 0; k < take; ++k) {
        batch.push_back(q.q.front());
        q.q.pop_front();
      }
    }
    for (Msg& m : batch) {
      check(m.b, "xthread: received message");
      unsigned what = static_cast<unsigned>(r.below(100));
      bool pass = producing && m.hops < 8 && what < 40;
      if (pass && what < 15 && m.b.via == Via::kFree) {
        size_t sz = pick_size(r, mix, o.huge_max);
        if (!reallocate(m.b, sz, "xthread: realloc of a received message"))
          error("xthread: realloc(%zu) returned NULL", sz);
        ++remote_reallocs;
        ++ops;
      }
      if (pass) {
        m.hops++;
        ++hops;
        if (try_send(sh, next, m)) continue;
      }
      if (m.origin != id) ++remote_frees;
      release(m.b, "xthread: free of a received message");
      sh->in_flight.fetch_sub(1);
      ++ops;
    }
    if (!producing && batch.empty()) {
      if (sh->producing.load() == 0 && sh->in_flight.load() == 0) break;
      std::this_thread::yield();
    }
  }
  sh->ops += ops;
  sh->remote_frees += remote_frees;
  sh->remote_reallocs += remote_reallocs;
  sh->hops += hops;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_standard(argc, argv, kAbout, "xthread");
  if (o.threads < 2) o.threads = 2;
  Run run(o);
  Shared sh(o);
  run_workers(&sh, o.threads, worker);
  if (sh.in_flight.load() != 0) error("xthread: %lld messages never arrived", static_cast<long long>(sh.in_flight.load()));
  return run.finish(sh.ops, kv("remote_frees", sh.remote_frees) + kv("remote_reallocs", sh.remote_reallocs) +
                                kv("hops", sh.hops));
}
