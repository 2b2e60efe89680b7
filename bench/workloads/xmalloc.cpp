// xmalloc: producer/consumer frees, modelled on xmalloc-test (Lever and Boreham, "malloc()
// Performance in a Multithreaded Linux Environment", USENIX 2000).
//
// Half the threads (at least one) allocate blocks of random sizes and pass them, in batches of
// `batch`, through a bounded queue to the other half, which check and free them: every block is
// freed by a thread other than the one that allocated it, and the allocating threads never see
// their memory come back through their own frees.
//
// Verifies: every block's contents are checked when it is freed; the number of blocks freed and
// the sum of their tags equal what the producers allocated.
#include <condition_variable>
#include <deque>
#include <mutex>

#include "common.hpp"

namespace {
struct Queue {
  std::mutex mu;
  std::condition_variable not_empty, not_full;
  std::deque<std::vector<void*>*> q;
  size_t cap = 64;
  int producers_left = 0;
};
}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const int threads = static_cast<int>(a.num("threads", 2, 2));
  const long blocks = a.num("blocks", 6000000, 20000);
  const long batch = a.num("batch", 100, 50);
  const long lo = a.num("min", 16, 16), hi = a.num("max", 512, 512);
  a.done("xmalloc [--threads 2] [--blocks 6000000] [--batch 100] [--min 16] [--max 512] [--smoke]");
  if (threads < 1 || blocks < 1 || batch < 1 || hi < lo) wl::usage_error("bad parameters");
  const int producers = threads >= 2 ? threads / 2 : 1;
  const int consumers = threads >= 2 ? threads - producers : 1;
  const long per_producer = blocks / producers;

  Queue Q;
  Q.producers_left = producers;
  std::atomic<uint64_t> tags_in{0}, tags_out{0}, freed{0};
  double t0 = wl::now();
  wl::run_threads(producers + consumers, [&](int t) {
    if (t < producers) {
      wl::Rng rng(static_cast<uint64_t>(t) + 99);
      uint64_t in = 0;
      long made = 0;
      while (made < per_producer) {
        auto* b = new std::vector<void*>();
        b->reserve(static_cast<size_t>(batch));
        for (long i = 0; i < batch && made < per_producer; i++, made++) {
          uint32_t tag = static_cast<uint32_t>(rng.next());
          b->push_back(wl::tagged_alloc(rng.range(lo, hi), tag));
          in += tag;
        }
        std::unique_lock<std::mutex> lk(Q.mu);
        Q.not_full.wait(lk, [&] { return Q.q.size() < Q.cap; });
        Q.q.push_back(b);
        Q.not_empty.notify_one();
      }
      tags_in += in;
      std::lock_guard<std::mutex> lk(Q.mu);
      if (--Q.producers_left == 0) Q.not_empty.notify_all();
    } else {
      uint64_t out = 0, n = 0;
      for (;;) {
        std::vector<void*>* b;
        {
          std::unique_lock<std::mutex> lk(Q.mu);
          Q.not_empty.wait(lk, [&] { return !Q.q.empty() || Q.producers_left == 0; });
          if (Q.q.empty()) break;
          b = Q.q.front();
          Q.q.pop_front();
          Q.not_full.notify_one();
        }
        for (void* p : *b) out += wl::tagged_free(p);
        n += b->size();
        delete b;
      }
      tags_out += out;
      freed += n;
    }
  });
  double t1 = wl::now();
  const uint64_t want = static_cast<uint64_t>(per_producer) * static_cast<uint64_t>(producers);
  if (freed.load() != want) wl::fail("freed %llu blocks, allocated %llu", (unsigned long long)freed.load(), (unsigned long long)want);
  if (tags_in.load() != tags_out.load()) wl::fail("tag sums differ");
  printf("blocks=%llu producers=%d consumers=%d\n", (unsigned long long)want, producers, consumers);
  wl::report(t1 - t0);
  return 0;
}
