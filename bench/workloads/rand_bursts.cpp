// rand_bursts: random sizes with bursts, in two styles.
//
//   --style mstress   modelled on mimalloc-bench's mstress: each thread keeps a set of live
//                     blocks with a skewed size distribution (mostly up to 256 B, some up to
//                     8 KiB, few up to 256 KiB, rarely up to 4 MiB); it replaces random blocks,
//                     frees random ones, swaps blocks through a shared transfer table (so blocks
//                     migrate and die on other threads), and now and then allocates a burst of as
//                     many blocks as it holds, which it then frees at random. The run is split
//                     into rounds of fresh threads; each exiting thread frees what it holds.
//   --style rptest    modelled on rpmalloc's benchmark: each thread allocates batches of blocks of
//                     random sizes biased to small (16 B .. 16 KiB), frees them in random order,
//                     passes one block in eight to the next thread (which frees it), and keeps a
//                     long-lived working set in which it replaces a few blocks per batch. A
//                     thread that is done keeps freeing what is passed to it until all are.
//
// Verifies: every block's contents are checked when it is freed, and the sum of the tags of the
// blocks freed equals the sum of the tags allocated.
#include <mutex>
#include <thread>

#include "common.hpp"

namespace {

std::atomic<uint64_t> g_in{0}, g_out{0};

struct Local {
  uint64_t in = 0, out = 0;
  void* alloc(wl::Rng& rng, size_t n) {
    uint32_t tag = static_cast<uint32_t>(rng.next());
    in += tag;
    return wl::tagged_alloc(n, tag);
  }
  void release(void* p) { out += wl::tagged_free(p); }
  ~Local() {
    g_in += in;
    g_out += out;
  }
};

size_t mstress_size(wl::Rng& rng, long big) {
  uint64_t r = rng.below(10000);
  if (r < 9000) return rng.range(8, 256);
  if (r < 9900) return rng.range(257, 8192);
  if (r < 9999 || big == 0) return rng.range(8193, 256 * 1024);
  return rng.range(256 * 1024, static_cast<uint64_t>(big));
}

void mstress(int threads, long rounds, long ops, long live, long big) {
  const long transfer_slots = 1000;
  auto* transfer = new std::atomic<void*>[transfer_slots];
  for (long i = 0; i < transfer_slots; i++) transfer[i].store(nullptr);
  const long per = ops / (rounds * threads);
  for (long round = 0; round < rounds; round++) {
    wl::run_threads(threads, [&](int t) {
      wl::Rng rng(static_cast<uint64_t>(round * 64 + t + 1));
      Local L;
      std::vector<void*> held;
      held.reserve(static_cast<size_t>(live) * 3);
      size_t target = static_cast<size_t>(live);
      for (long i = 0; i < per; i++) {
        if (held.size() > target) {  // coming down from a burst: free at random
          size_t k = rng.below(held.size());
          L.release(held[k]);
          held[k] = held.back();
          held.pop_back();
          continue;
        }
        uint64_t r = rng.below(1000);
        if (r == 0) {  // burst: as many new blocks as are held now, plus `live`
          size_t n = held.size() + static_cast<size_t>(live);
          for (size_t k = 0; k < n; k++) held.push_back(L.alloc(rng, mstress_size(rng, big)));
        } else if (r < 600 || held.empty()) {  // allocate (replace when at target)
          void* p = L.alloc(rng, mstress_size(rng, big));
          if (held.size() < target) {
            held.push_back(p);
          } else {
            size_t k = rng.below(held.size());
            L.release(held[k]);
            held[k] = p;
          }
        } else if (r < 900) {  // free one
          size_t k = rng.below(held.size());
          L.release(held[k]);
          held[k] = held.back();
          held.pop_back();
        } else {  // swap through the transfer table
          size_t k = rng.below(held.size());
          void* got = transfer[rng.below(transfer_slots)].exchange(held[k]);
          if (got) {
            held[k] = got;
          } else {
            held[k] = held.back();
            held.pop_back();
          }
        }
      }
      for (void* p : held) L.release(p);
    });
  }
  Local L;
  for (long i = 0; i < transfer_slots; i++)
    if (void* p = transfer[i].load()) L.release(p);
  delete[] transfer;
}

struct Mailbox {
  std::mutex mu;
  std::vector<void*> v;
  char pad[64];
};

void rptest(int threads, long batches, long batch, long working, long hi) {
  std::vector<Mailbox> box(static_cast<size_t>(threads));
  std::atomic<int> running{threads};
  wl::run_threads(threads, [&](int t) {
    wl::Rng rng(static_cast<uint64_t>(t) * 7 + 3);
    Local L;
    auto size = [&] {
      double u = rng.unit();
      return static_cast<size_t>(16 + static_cast<double>(hi - 16) * u * u * u);
    };
    std::vector<void*> ws(static_cast<size_t>(working));
    for (auto& p : ws) p = L.alloc(rng, size());
    std::vector<void*> cur, pass, got;
    cur.reserve(static_cast<size_t>(batch));
    Mailbox& next = box[static_cast<size_t>((t + 1) % threads)];
    Mailbox& mine = box[static_cast<size_t>(t)];
    for (long b = 0; b < batches; b++) {
      for (long i = 0; i < batch; i++) cur.push_back(L.alloc(rng, size()));
      for (long i = 0; i < 8 && working > 0; i++) {  // the long-lived set changes slowly
        size_t k = rng.below(ws.size());
        L.release(ws[k]);
        ws[k] = L.alloc(rng, size());
      }
      for (size_t i = cur.size(); i > 1; i--) std::swap(cur[i - 1], cur[rng.below(i)]);
      for (void* p : cur) {
        if (rng.below(8) == 0) pass.push_back(p);
        else L.release(p);
      }
      cur.clear();
      {
        std::lock_guard<std::mutex> lk(next.mu);
        next.v.insert(next.v.end(), pass.begin(), pass.end());
      }
      pass.clear();
      {
        std::lock_guard<std::mutex> lk(mine.mu);
        got.swap(mine.v);
      }
      for (void* p : got) L.release(p);
      got.clear();
    }
    for (void* p : ws) L.release(p);
    // A consumer keeps consuming: until every thread is done, this one frees what the thread
    // before it still passes (otherwise that thread's last batches pile up in a mailbox nobody
    // empties, and the peak RSS measures how far apart the threads happened to finish).
    running--;
    while (running.load() > 0) {
      {
        std::lock_guard<std::mutex> lk(mine.mu);
        got.swap(mine.v);
      }
      for (void* p : got) L.release(p);
      got.clear();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  Local L;
  for (auto& m : box)
    for (void* p : m.v) L.release(p);
}

}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const std::string style = a.str("style", "mstress");
  const int threads = static_cast<int>(a.num("threads", 2, 2));
  // mstress
  const long rounds = a.num("rounds", 10, 2);
  const long ops = a.num("ops", 10000000, 20000);
  const long live = a.num("live", 2000, 200);
  const long big = a.num("big", 4 << 20, 1 << 20);
  // rptest
  const long batches = a.num("batches", 8000, 40);
  const long batch = a.num("batch", 500, 100);
  const long working = a.num("working", 2000, 100);
  const long hi = a.num("max", 16384, 16384);
  a.done("rand_bursts --style mstress [--threads 2] [--rounds 10] [--ops 10000000] [--live 2000] [--big 4194304]\n"
         "rand_bursts --style rptest [--threads 2] [--batches 8000] [--batch 500] [--working 2000] [--max 16384]");
  if (threads < 1) wl::usage_error("bad parameters");
  double t0 = wl::now();
  if (style == "mstress") {
    if (rounds < 1 || live < 1 || ops < 1) wl::usage_error("bad parameters");
    mstress(threads, rounds, ops, live, big);
  } else if (style == "rptest") {
    if (batches < 1 || batch < 1 || working < 0 || hi < 16) wl::usage_error("bad parameters");
    rptest(threads, batches, batch, working, hi);
  } else {
    wl::usage_error("--style must be mstress or rptest");
  }
  double t1 = wl::now();
  if (g_in.load() != g_out.load()) wl::fail("tag sums differ: a block was lost or freed twice");
  printf("style=%s\n", style.c_str());
  wl::report(t1 - t0);
  return 0;
}
